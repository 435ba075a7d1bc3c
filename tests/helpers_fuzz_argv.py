"""Hypothesis strategies for the fuzzing pass's command lines: every subcommand and every flag, with values from
pools of valid and invalid ones, over the worker's workspace (``tests/helpers_fuzz_worker.py``).

Each value carries the reason it is *certainly* invalid ("" when it is not certainly invalid): a command that
exits 0 (or gets as far as training, a sweep or the MLflow server) with such a value is a finding. ``sweep``
always has ``--dry-run`` and never ``--address``; ``ui`` never starts a server (the worker's guard stops it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from hypothesis import strategies as st

from helpers_fuzz_spec import results_damage, spec_files

__all__ = ["Case", "cases"]

SPEC = "spec"  # the case's mutated file: the rules of helpers_fuzz_rules say whether it is invalid
SWEEP, TRAIN = "sweep file", "train file"

FILES = [("spec.yaml", SPEC)] * 8 + [
    ("search_spaces/cifar10-cpu.yaml", SWEEP), ("search_spaces/cifar10.yaml", SWEEP),
    ("search_spaces/cifar10-recipes-cpu.yaml", SWEEP), ("hand.yaml", SWEEP),
    ("configs/cifar10-small-cpu.yaml", TRAIN), ("configs/cifar10-fp32-cpu.yaml", TRAIN), ("link.yaml", SPEC),
    ("ünï cødé.yaml", TRAIN), ("with space.yaml", TRAIN),
    ("-dash.yaml", TRAIN), ("\udcff.yaml", TRAIN), ("nope.yaml", "no such file"), ("", "an empty path"),
    (".", "a directory"), ("emptydir", "a directory"), ("notyaml.bin", "not YAML"), ("empty.yaml", "an empty file"),
    ("/dev/null", "an empty file"), ("dangling.yaml", "a dangling link"), ("x" * 300 + ".yaml", "a name too long"),
    ("results/hand", "a directory"), ("spec.yaml/", SPEC), ("afile", "not a mapping"),
    ("results/hand/sweep.json", "a results record, not a spec"), ("/proc/self/status", "not a spec")]
EPOCHS = [("1", ""), ("3", ""), ("50", ""), ("0", "epochs must be >= 1"), ("-1", "epochs must be >= 1"),
          ("100001", "epochs above 100000"), ("99999999999999999999", "epochs above 100000"), ("abc", "not a number"),
          ("1.5", "not a whole number"), (" 3", ""), ("\u0663", "")]
STORAGE = [("results2", ""), ("~/elsewhere", ""), ("results", ""), ("s3://bucket/x", ""), ("", ""),
           ("afile", "a file, not a directory"), ("afile/sub", "a parent is a file"), ("/proc/nope", "cannot be made"),
           ("x" * 300, "a path component too long"), ("/dev/null", "not a directory")]
TRACKING = [("sqlite:///t.db", ""), ("mlruns", ""), ("", ""), ("http://127.0.0.1:9", "nothing listens there"),
            ("http://user:s3cr3tpw@127.0.0.1:9", "nothing listens there"), ("bogus://x", "not a tracking URI"),
            ("http://", "not a tracking URI"), ("sqlite://rel.db", "not a tracking URI"),
            ("http://[::1", "not a tracking URI")]
TRAIN_OUT = [("runs/out", ""), ("out dir", ""), ("", ""), ("results/hand", ""), ("afile", "a file, not a directory"),
             ("afile/x", "a parent is a file"), ("/proc/x", "cannot be made"), ("hand.yaml", "an existing file")]
RESUME = [("runs/good", ""), ("", ""), ("runs/bad", "no usable checkpoint"), ("nope", "no such run directory"),
          ("hand.yaml", "a file, not a run directory"), ("emptydir", "no checkpoint")]
RESULTS = [("results/hand", "hand"), ("results/multi", "multi"), ("results/mut", "mut"), ("results/http", "http"),
           ("results/nodb", "nodb"), ("results", "not a results directory"), ("afile", "not a results directory"),
           ("emptydir", "not a results directory"), ("nope", "no such directory"), ("", "an empty path")]
EXPORT_RESULTS = RESULTS + [("hand.yaml", "hand"), ("multi.yaml", "multi"),
                            ("configs/cifar10-small-cpu.yaml", "a train file, not a sweep"),
                            ("search_spaces/cifar10-cpu.yaml", "that sweep has no results")]
EXPORT_OUT = [("best.yaml", ""), ("out/deep/best.yaml", ""), ("results/hand/best.yaml", ""), ("-", ""),
              ("hand.yaml", ""),  # the spec of results/hand: refused for that sweep only (see _export)
              ("\udcff.yaml", ""), ("results/hand/sweep.json", "a record of a results directory"),
              ("results/hand/trials.json", "a record of a results directory"),
              ("results/multi/history.jsonl", "a record of a results directory"), (".", "a directory"),
              ("emptydir", "a directory"), ("", "a directory"), ("afile/x.yaml", "a parent is a file"),
              ("/proc/x.yaml", "cannot be written")]
PACKED = [("best.tern", ""), ("results/hand/best.tern", ""), ("out/m.tern", ""), (".", "a directory"),
          ("results/hand/sweep.json", "a record of a results directory"), ("afile/x.tern", "a parent is a file")]
REPORT_OUT = [("reports/r.html", ""), ("r.html", ""), ("results/hand/report.html", ""), ("", ""), ("hand.yaml", ""),
              ("results/hand/trials.json", "a record of a results directory"), (".", "a directory"),
              ("afile/x.html", "a parent is a file"), ("/proc/x.html", "cannot be written")]
HOSTS = [("127.0.0.1", ""), ("localhost", ""), ("::1", ""), ("0.0.0.0", ""), ("", "an empty host"),
         ("not a host", "not a host name"), ("999.999.1.1", "not an address"), ("127.0.0.1:80", "a port in the host"),
         ("\udcff", "not a host name")]
PORTS = [("5000", ""), ("8080", ""), ("0", "port 0"), ("-1", "a negative port"), ("65536", "above 65535"),
         ("99999999", "above 65535"), ("abc", "not a number"), ("5000.0", "not a whole number")]
JUNK = [([], "no command"), (["--help"], ""), (["-h"], ""), (["nope"], "an unknown command"),
        (["--debug"], "no command"), (["validate"], "no file"), (["sweep", "--dry-run"], "no file"),
        (["export"], "no results"), (["ui", "--port"], "no port"), (["--version"], "an unknown flag"),
        (["sweep", "--help"], ""), (["export", "-h"], ""), (["train", "--help"], ""), (["ui", "-h"], "")]


@dataclass
class Case:
    argv: list
    command: str
    file_kind: str = ""          # validate/sweep/train: SPEC, SWEEP, TRAIN, or why the file is invalid
    invalid: list = field(default_factory=list)  # why the command line is certainly invalid
    flags: dict = field(default_factory=dict)    # option -> why its (last) value is invalid, or ""
    outputs: list = field(default_factory=list)  # paths the command may write (kept out of the snapshot check)
    spec: bytes = b""
    spec_ops: tuple = ()
    results_op: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def reasons(self) -> list:
        return self.invalid + [why for why in self.flags.values() if why]

    def key(self) -> str:
        """What the run depends on: the spec and the results damage only where the command line names them."""
        spec = any(a.endswith(("spec.yaml", "spec.yaml/", "link.yaml")) for a in self.argv)
        mut = any("results/mut" in a for a in self.argv)
        return repr((self.argv, self.spec if spec else b"", self.results_op if mut else {}, self.env))

    def wire(self) -> dict:
        return {"argv": self.argv, "spec": base64.b64encode(self.spec).decode(), "results_op": self.results_op,
                "env": self.env}


_ALIAS = {"-o": "--output", "-q": "--quiet", "-v": "--verbose"}


def _opt(draw, case: Case, flag: str, pool: list) -> str:
    value, why = draw(st.sampled_from(pool))
    case.argv += [f"{flag}={value}"] if draw(st.integers(0, 9)) == 0 else [flag, value]
    case.flags[_ALIAS.get(flag, flag)] = f"{flag} {value!r}: {why}" if why else ""  # argparse keeps the last
    return value


def _sometimes(draw) -> bool:
    return draw(st.integers(0, 2)) == 0


def _file(draw, case: Case) -> None:
    name, kind = draw(st.sampled_from(FILES))
    case.argv.append(name)
    case.file_kind = kind


def _sweep(draw, case: Case) -> None:
    _file(draw, case)
    case.argv.append("--dry-run")
    for flag in draw(st.lists(st.sampled_from(["--resume", "--storage", "--tracking-uri", "-q", "-v", "--quiet",
                                               "--verbose"]), unique=True, max_size=3)):
        if flag == "--storage":
            _opt(draw, case, flag, STORAGE)
        elif flag == "--tracking-uri":
            uri = _opt(draw, case, flag, TRACKING)
            if case.file_kind == SPEC and "127.0.0.1:9" in uri:  # the mutated file may disable tracking
                case.flags[flag] = ""
        else:
            case.argv.append(flag)


def _train(draw, case: Case) -> None:
    _file(draw, case)
    resume = ""
    for flag in draw(st.lists(st.sampled_from(["-o", "--output", "--resume", "--epochs", "-q", "--quiet"]),
                              unique=True, max_size=3)):
        if flag in ("-o", "--output"):
            case.outputs.append(_opt(draw, case, flag, TRAIN_OUT))
        elif flag == "--resume":
            resume = _opt(draw, case, flag, RESUME)
            case.outputs.append(resume)
        elif flag == "--epochs":
            _opt(draw, case, flag, EPOCHS)
        else:
            case.argv.append(flag)
    if resume:  # the run continues in DIR: -o is not used
        case.flags.pop("--output", None)


def _results_arg(draw, case: Case, pool: list) -> str:
    value, kind = draw(st.sampled_from(pool))
    case.argv.append(value)
    if kind not in ("hand", "multi", "mut", "http", "nodb"):
        case.invalid.append(f"RESULTS {value!r}: {kind}")
        return ""
    return kind


def _export(draw, case: Case) -> None:
    kind = _results_arg(draw, case, EXPORT_RESULTS)
    out = "best.yaml"
    flags = draw(st.lists(st.sampled_from(["-o", "--output", "--epochs", "--keep-split", "--spec", "--pick",
                                           "--packed"]), unique=True, max_size=4))
    for flag in sorted(flags, key=lambda f: f == "--packed"):  # --packed after -o: it may name the same file
        if flag in ("-o", "--output"):
            out = _opt(draw, case, flag, EXPORT_OUT)
        elif flag == "--epochs":
            _opt(draw, case, flag, EPOCHS)
        elif flag == "--spec":
            own = {"multi": "multi.yaml", "http": "http.yaml", "nodb": "nodb.yaml"}.get(kind, "hand.yaml")
            other = "another spec made the results" if kind and kind != "mut" else ""
            _opt(draw, case, flag, [(own, ""), ("search_spaces/cifar10-cpu.yaml", other), ("spec.yaml", other),
                                    ("nope.yaml", "no such file"), (".", "a directory")])
        elif flag == "--pick":
            single = "not an objective" if kind in ("hand", "http", "nodb") else ""
            _opt(draw, case, flag, [("val_acc", ""), ("val_acc:0.05", ""), ("", ""), ("val_acc:inf", ""),
                                    ("ternary_zero_frac", single), ("ternary_zero_frac:0.01", single),
                                    ("val_acc:abc", "the tolerance is not a number"), ("nope", "not an objective"),
                                    (":", "not an objective"), ("val_acc:nan", "a nan tolerance"),
                                    ("val_acc:-1", "a negative tolerance")])
        elif flag == "--packed":
            case.outputs.append(_opt(draw, case, flag, PACKED + [(out, "the same file as -o")]))
        else:
            case.argv.append(flag)
    case.outputs.append(out)
    if kind in ("hand", "mut") and out == "hand.yaml":
        case.invalid.append("-o is the spec file that made the results")


def _report(draw, case: Case) -> None:
    kind = _results_arg(draw, case, RESULTS + [("hand.yaml", "a spec file, not a results directory")])
    case.outputs.append("reports")
    if _sometimes(draw):
        out = _opt(draw, case, draw(st.sampled_from(["-o", "--output"])), REPORT_OUT)
        case.outputs.append(out)
        if kind in ("hand", "mut") and out == "hand.yaml":
            case.invalid.append("-o is the spec file that made the results")


def _ui(draw, case: Case) -> None:
    kind = _results_arg(draw, case, RESULTS + [("hand.yaml", "a spec file, not a results directory")])
    if kind == "nodb":
        case.invalid.append("its tracking store does not exist")
    for flag in draw(st.lists(st.sampled_from(["--host", "--port"]), unique=True, max_size=2)):
        _opt(draw, case, flag, HOSTS if flag == "--host" else PORTS)
        if kind == "http":  # a sweep tracked to a server: ui names that server and opens nothing
            case.flags[flag] = ""


def _noise(draw, case: Case) -> None:
    how = draw(st.sampled_from(["unknown-flag", "dup", "dashdash", "drop-positional", "extra", "abbrev"]))
    argv = case.argv
    if how == "unknown-flag":
        argv.insert(draw(st.integers(1, len(argv))), "--nope")
        case.invalid.append("an unknown flag")
    elif how == "dup" and len(argv) > 2:
        argv.append(argv[-2] if argv[-2].startswith("-") else argv[-1])
    elif how == "dashdash":
        argv.insert(draw(st.integers(1, len(argv))), "--")
    elif how == "drop-positional" and len(argv) > 1:
        del argv[1]
        case.invalid.append("the positional argument is missing")
    elif how == "extra":
        argv.append("extra")
        case.invalid.append("an extra argument")
    elif how == "abbrev":
        case.argv = [a[:-2] if a.startswith("--") and len(a) > 5 and "=" not in a else a for a in argv]


_COMMANDS = {"validate": _file, "sweep": _sweep, "train": _train, "export": _export, "report": _report, "ui": _ui}
_WEIGHTS = ["validate"] * 5 + ["sweep"] * 5 + ["train"] * 3 + ["export"] * 3 + ["report", "ui"] * 2 + ["junk"]
_ENV = [None] * 16 + [("TERNSEARCH_DATA", None), ("TERNSEARCH_DATA", "{ws}/nodata"), ("TERNSEARCH_DATA", "nodata"),
                      ("MLFLOW_TRACKING_URI", "http://127.0.0.1:9"), ("MLFLOW_TRACKING_URI", "bogus://x"),
                      ("MLFLOW_TRACKING_URI", "sqlite:///env.db"), ("MLFLOW_TRACKING_URI", "")]


@st.composite
def cases(draw) -> Case:
    command = draw(st.sampled_from(_WEIGHTS))
    spec, ops = draw(spec_files(prefer=command))
    case = Case(argv=[], command=command, spec=spec, spec_ops=ops, results_op=draw(results_damage()))
    if command == "junk":
        argv, why = draw(st.sampled_from(JUNK))
        case.argv, case.invalid = list(argv), [why] if why else []
        return case
    if draw(st.integers(0, 7)) == 0:
        case.argv.append("--debug")
    case.argv.append(command)
    _COMMANDS[command](draw, case)
    if draw(st.integers(0, 14)) == 0:
        _noise(draw, case)
    env = draw(st.sampled_from(_ENV))
    if env:
        case.env[env[0]] = env[1]
    return case
