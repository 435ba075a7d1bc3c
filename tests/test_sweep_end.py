"""How a sweep that Tune reports as finished ends: a stop that came while no trial was running (Ctrl-C or SIGTERM
between two trials) makes Tune return as if every trial had run; fewer trials than num_samples is an interruption,
to be resumed, not a finished sweep (no best.yaml, no 'finished' parent run)."""

from __future__ import annotations

from pathlib import Path

from helpers_report import MIXED, write_hand_results
from ternsearch.results.location import resolve_storage, resume_command
from ternsearch.run.sweep import _after_fit
from ternsearch.spec import load_spec


def _spec(tmp_path: Path, num_samples: int):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: ends\nsearcher: {{num_samples: {num_samples}}}\n"
                    "search:\n  lr: {loguniform: [0.001, 0.1]}\n")
    return load_spec(path)


def test_fewer_trials_than_num_samples_is_an_interruption(tmp_path, capsys):
    results = write_hand_results(tmp_path / "results", MIXED[:2])
    summary = _after_fit(_spec(tmp_path, 5), results, {}, None, "FINISHED")
    assert summary == {"interrupted": True, "results": str(results)}
    err = capsys.readouterr().err
    assert "sweep interrupted: 2 trials finished, 0 unfinished, 3 not started. Resume with:" in err
    assert not (results / "best.yaml").exists()


def test_the_resume_hint_names_a_storage_given_on_the_command_line(tmp_path, capsys):
    """``--storage DIR`` moved the sweep: the hint says so, or ``--resume`` alone would look in the spec's storage."""
    spec = _spec(tmp_path, 5)
    assert resume_command(spec, {}) == f"ternsearch sweep {spec.file} --resume"
    own = {"storage_path": resolve_storage(spec, None)}
    assert resume_command(spec, own) == f"ternsearch sweep {spec.file} --resume"
    elsewhere = tmp_path / "other results"
    results = write_hand_results(elsewhere / "ends", MIXED[:2])
    _after_fit(spec, results, {"storage_path": str(elsewhere)}, None, "FINISHED")
    err = capsys.readouterr().err
    assert f"Resume with: ternsearch sweep {spec.file} --resume --storage '{elsewhere}'" in err
