"""A sweep started before ternsearch/ had subpackages resumes: its Tune state (tuner.pkl, the searcher's state)
names our classes by their former modules. The names below are every ternsearch class a sweep of that version
pickled (read from its tuner.pkl and searcher state with pickletools)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORMER = [("ternsearch.failfast", "_StopAll", "ternsearch.run.failfast"),
          ("ternsearch.progress", "SweepProgress", "ternsearch.run.progress"),
          ("ternsearch.records", "SweepRecorder", "ternsearch.results.recorder"),
          ("ternsearch.space", "DefineByRun", "ternsearch.spec.space"),
          ("ternsearch.spec", "Param", "ternsearch.spec.models"),
          ("ternsearch.tracking", "MLflowTracker", "ternsearch.tracking.tracker"),
          ("ternsearch.tuner", "_Searcher", "ternsearch.run.tuner")]

CODE = """\
import importlib, pickle, sys
from ternsearch.run.tuner import accept_former_module_names
accept_former_module_names()
former, name, now = sys.argv[1:]
cls = pickle.loads(f"c{former}\\n{name}\\n.".encode())
assert cls is getattr(importlib.import_module(now), name), (cls, now)
"""


@pytest.mark.parametrize("former,name,now", FORMER)
def test_a_class_pickled_under_its_former_module_is_found(former, name, now):
    """In a fresh process, as a resuming sweep unpickles (nothing of the new layout imported before)."""
    proc = subprocess.run([sys.executable, "-c", CODE, former, name, now], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_without_the_former_names_the_old_state_does_not_load():
    """The check above can fail: the former module names are not importable by themselves."""
    code = "import pickle, ternsearch.run.tuner; pickle.loads(b'cternsearch.tuner\\n_Searcher\\n.')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "No module named 'ternsearch.tuner'" in proc.stderr
