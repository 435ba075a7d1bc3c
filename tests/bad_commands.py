"""The bad-argument table of tests/test_bad_commands.py: every row is a command line with a mistake in its
arguments, and the one line it must print on stderr (exit code 1, no traceback, no file changed).

In ``argv`` and ``expect``, ``{results}`` is a finished sweep's results directory (relative to the working
directory the command runs in, which ``make_workdir`` fills), ``{work}`` that working directory, ``{tmp}`` the
empty TMPDIR/RAY_TMPDIR of the commands, ``{busy}`` a port a listening socket holds. An ``expect`` starting with
``re:`` is a regular expression the whole line must match; any other is the line itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers_report import HAND_SPEC, write_hand_sweep

REPO = Path(__file__).resolve().parents[1]
NAME = "rec"


def make_workdir(work: Path) -> None:
    """A working directory with a finished sweep's results (hand-made by helpers_report.write_hand_sweep: sweep.json,
    trials.json, history.jsonl, spec.yaml and a stand-in MLflow store, no Ray), the spec that made it, a fresh
    spec for ``sweep --dry-run`` (its storage not created), a train config, a folder, a file and a folder that
    holds no sweep."""
    results = work / "results" / NAME
    write_hand_sweep(work, NAME, tracking_uri=f"sqlite:///{results / 'mlflow.db'}", experiment=NAME)
    (work / "specs" / "dry.yaml").write_text(HAND_SPEC.format(name="dry", storage=work / "fresh"))
    (results / "mlflow.db").write_bytes(b"SQLite format 3\x00 stand-in")
    shutil.copy(REPO / "configs" / "cifar10-small-cpu.yaml", work / "train.yaml")
    (work / "adir").mkdir()
    (work / "adir" / "kept.txt").write_text("a file in a folder given as an output\n")
    (work / "afile").write_text("not a folder\n")
    (work / "notresults").mkdir()


@dataclass(frozen=True)
class Row:
    name: str
    argv: tuple[str, ...]
    expect: str


def _row(name: str, argv: str | list[str], expect: str) -> Row:
    return Row(name, tuple(argv.split() if isinstance(argv, str) else argv), expect)


HELP = "(run ternsearch {} --help)"
STORAGE_ALLOWED = "(a folder, or a URI: s3://, gs://, gcs://, hdfs://, viewfs://, abfs://, abfss://, file://)"
URI_ALLOWED = ("(a tracking URI is http(s)://HOST[:PORT], sqlite:///FILE, a folder or file:FOLDER, postgresql://, "
               "mysql://, mssql:// or databricks)")
HTTP_ALLOWED = "(http://HOST[:PORT] with a port from 1 to 65535, e.g. http://127.0.0.1:5000)"
ADDRESS_ALLOWED = "(auto, or HOST:PORT of a Ray head such as 10.0.0.5:6379)"
NO_CLUSTER = "start one with ray start --head, or leave --address out for a local Ray"
EPOCHS = "not a number of epochs (a whole number, 1 or more)"
EPOCHS_HERE = "(a whole number of epochs, from 1 to 100000 and more than the config's train.warmup_epochs)"
PORT = "not a port (1 to 65535, or 0 for a free one)"
PICK = "(OBJECTIVE[:TOLERANCE], TOLERANCE a number, 0 or more, e.g. val_acc:0.01)"
UNWRITABLE = "give a path in a folder you can write)"
NOT_RESULTS = "not a ternsearch results directory (no sweep.json)"
A_FILE = "not a results directory (a file; give the sweep's folder, the one holding sweep.json)"
DRY = "sweep specs/dry.yaml --dry-run"

ROWS = [
    # 5. argparse's own mistakes
    _row("unknown flag", "export {results} --bogus",
         f"ternsearch export: unrecognized arguments: --bogus {HELP.format('export')}"),
    _row("unknown flag of sweep", f"{DRY} --nope",
         f"ternsearch sweep: unrecognized arguments: --nope {HELP.format('sweep')}"),
    _row("epochs not an int", "export {results} --epochs abc",
         f"ternsearch export: --epochs: invalid int value: 'abc' {HELP.format('export')}"),
    _row("port not an int", "ui {results} --port x",
         f"ternsearch ui: --port: invalid int value: 'x' {HELP.format('ui')}"),
    _row("missing positional", "export",
         f"ternsearch export: the following arguments are required: results {HELP.format('export')}"),
    _row("missing config", "train",
         f"ternsearch train: the following arguments are required: config {HELP.format('train')}"),
    _row("no command", [], "ternsearch: the following arguments are required: COMMAND (run ternsearch --help)"),
    _row("unknown command", "bogus", "ternsearch: COMMAND: invalid choice: 'bogus' (choose from 'train', 'validate', "
         "'sweep', 'export', 'report', 'ui', 'dashboard', 'evaluate') (run ternsearch --help)"),
    _row("flag value missing", "export {results} -o", "ternsearch export: -o/--output: expected one argument "
         f"{HELP.format('export')}"),
    # 1. numbers and picks
    _row("export epochs 0", "export {results} --epochs 0", f"--epochs 0: {EPOCHS}"),
    _row("export epochs -5", "export {results} --epochs -5", f"--epochs -5: {EPOCHS}"),
    _row("train epochs 0", "train train.yaml --epochs 0", f"--epochs 0: {EPOCHS}"),
    _row("train epochs -1", "train train.yaml --epochs -1", f"--epochs -1: {EPOCHS}"),
    _row("export epochs too many", "export {results} --epochs 100001", "--epochs 100001: input should be less than "
         f"or equal to 100000 {EPOCHS_HERE}"),
    _row("train epochs not above warmup", "train train.yaml --epochs 1",  # the config has warmup_epochs: 1
         f"--epochs 1: warmup_epochs (1) must be smaller than epochs (1) {EPOCHS_HERE}"),
    _row("pick negative tolerance", "export {results} --pick val_acc:-0.1",
         f"--pick val_acc:-0.1: the tolerance -0.1 is not 0 or more {PICK}"),
    _row("pick nan tolerance", "export {results} --pick val_acc:nan",
         f"--pick val_acc:nan: the tolerance nan is not 0 or more {PICK}"),
    _row("pick tolerance not a number", "export {results} --pick val_acc:abc",
         f"--pick val_acc:abc: 'abc' is not a number {PICK}"),
    _row("pick unknown objective", "export {results} --pick nosuch",
         "--pick nosuch: 'nosuch' is not an objective of sweep 'rec' (choose from: val_acc)"),
    # 1. paths: outputs and inputs
    _row("export -o a directory", "export {results} -o adir",
         "--output adir: refusing to write here: it is a directory (give a file path)"),
    _row("export -o under a file", "export {results} -o /dev/null/x", "--output /dev/null/x: refusing to write here: "
         f"its folder cannot be created or written (/dev/null is not a directory; {UNWRITABLE}"),
    _row("export -o unwritable", "export {results} -o /proc/ternsearch-test/out",
         r"re:--output /proc/ternsearch-test/out: refusing to write here: its folder cannot be created or written "
         r"\(cannot write in /proc: .+; give a path in a folder you can write\)"),
    _row("export -o empty", ["export", "{results}", "-o", ""], "--output '': is empty (give a path)"),
    _row("export -o not UTF-8", ["export", "{results}", "-o", "\udcff.yaml"],
         "--output '\\udcff.yaml': is not a UTF-8 name (give a path of UTF-8 characters)"),
    _row("export --packed a directory", "export {results} -o fresh.yaml --packed adir",
         "--packed adir: refusing to write here: it is a directory (give a file path)"),
    _row("export --packed onto -o", "export {results} -o same.yaml --packed same.yaml",
         "--packed same.yaml: refusing to write here: it is also the --output file (give another path)"),
    _row("export --spec missing", "export {results} --spec MISSING",
         "--spec MISSING: no such file (give the spec file that made the sweep)"),
    _row("export --spec a directory", "export {results} --spec adir",
         "--spec adir: not a file (give the spec file that made the sweep)"),
    _row("report -o a directory", "report {results} -o adir",
         "--output adir: refusing to write here: it is a directory (give a file path)"),
    _row("report -o under a file", "report {results} -o afile/report.html", "--output afile/report.html: refusing "
         f"to write here: its folder cannot be created or written ({{work}}/afile is not a directory; {UNWRITABLE}"),
    _row("train -o a file", "train train.yaml -q -o afile",
         "--output afile: cannot write the run there ({work}/afile is not a directory; give a folder you can write)"),
    _row("train -o under a file", "train train.yaml -q -o /dev/null/x",
         "--output /dev/null/x: cannot write the run there (/dev/null is not a directory; give a folder you can "
         "write)"),
    _row("train --resume missing", "train train.yaml --resume nothere",
         "--resume nothere: no such run directory (give the folder of the run to continue)"),
    _row("train --resume with --output", "train train.yaml --resume adir -o elsewhere",
         "--output elsewhere: cannot be given with --resume (a resumed run continues in its own directory, adir; "
         "leave --output out)"),
    # 2. tracking URI and storage overrides
    _row("tracking port 99999", f"{DRY} --tracking-uri http://localhost:99999",
         f"--tracking-uri http://localhost:99999: is not a valid http URL: Port out of range 0-65535 {HTTP_ALLOWED}"),
    _row("tracking broken IPv6", [*DRY.split(), "--tracking-uri", "http://[::1"],
         f"--tracking-uri 'http://[::1': is not a valid http URL: Invalid IPv6 URL {HTTP_ALLOWED}"),
    _row("tracking no host", f"{DRY} --tracking-uri http://", f"--tracking-uri http://: has no host {HTTP_ALLOWED}"),
    _row("tracking not a URI", [*DRY.split(), "--tracking-uri", "not a uri"],
         f"--tracking-uri 'not a uri': contains a space or a control character {URI_ALLOWED}"),
    _row("tracking host:port", f"{DRY} --tracking-uri localhost:5000",
         "--tracking-uri localhost:5000: has no scheme (for a server write http://localhost:5000)"),
    _row("tracking unknown scheme", f"{DRY} --tracking-uri ftp://host/x",
         f"--tracking-uri ftp://host/x: has an unknown scheme 'ftp:' {URI_ALLOWED}"),
    _row("tracking sqlite without file", f"{DRY} --tracking-uri sqlite://", "--tracking-uri sqlite://: names no "
         "database file (sqlite:///FILE for a relative path, sqlite:////ABSOLUTE/FILE)"),
    _row("tracking empty", [*DRY.split(), "--tracking-uri", ""], f"--tracking-uri '': is empty {URI_ALLOWED}"),
    _row("storage empty", [*DRY.split(), "--storage", ""],
         f"--storage '': is empty {STORAGE_ALLOWED}"),
    _row("storage unknown scheme", f"{DRY} --storage garbage://x",
         f"--storage garbage://x: has the scheme 'garbage://', which Ray Tune cannot open {STORAGE_ALLOWED}"),
    _row("storage file uri relative", f"{DRY} --storage file://runs", "--storage file://runs: is not a file URI of "
         "an absolute path (write file:///ABSOLUTE/PATH, or a plain path)"),
    _row("tracking file uri relative", f"{DRY} --tracking-uri file://mlruns", "--tracking-uri file://mlruns: is not "
         "a file URI of an absolute path (write file:///ABSOLUTE/FOLDER, file:FOLDER or FOLDER)"),
    _row("storage a file", f"{DRY} --storage afile", "--storage afile: {work}/afile is not writable: {work}/afile "
         "is not a directory (give a directory you can write)"),
    # 4. --address
    _row("address nothing listening", f"{DRY} --address 127.0.0.1:1",
         f"--address 127.0.0.1:1: no Ray cluster is listening there ({NO_CLUSTER})"),
    _row("address unknown host", f"{DRY} --address nosuchhost.invalid:6379", "--address nosuchhost.invalid:6379: "
         f"no Ray cluster is listening there (unknown host nosuchhost.invalid; {NO_CLUSTER})"),
    _row("address malformed", f"{DRY} --address abc", f"--address abc: is not a Ray cluster address {ADDRESS_ALLOWED}"),
    _row("address port 99999", f"{DRY} --address 1.2.3.4:99999",
         f"--address 1.2.3.4:99999: has port 99999, outside 1 to 65535 {ADDRESS_ALLOWED}"),
    _row("address Ray Client", f"{DRY} --address ray://127.0.0.1:10001", "--address ray://127.0.0.1:10001: is a "
         "Ray Client address, which a sweep cannot use: its driver runs here and joins the cluster itself (give the "
         "head's HOST:PORT, port 6379 unless ray start --port said otherwise)"),
    _row("address auto without a cluster", f"{DRY} --address auto", "--address auto: no Ray cluster runs on this "
         f"machine (none recorded in {{tmp}}/ray/ray_current_cluster; {NO_CLUSTER}, or give HOST:PORT of a head)"),
    # 3. ui
    _row("ui port 70000", "ui {results} --port 70000", f"--port 70000: {PORT}"),
    _row("ui port -1", "ui {results} --port -1", f"--port -1: {PORT}"),
    _row("ui port in use", "ui {results} --port {busy}", "--port {busy}: 127.0.0.1:{busy} is already in use (stop "
         "what listens there, or give another --port, or --port 0 for a free one)"),
    _row("ui unknown host", "ui {results} --host nosuchhost.invalid", "--host nosuchhost.invalid: unknown host (an "
         "address of this machine to listen on: 127.0.0.1, localhost, or 0.0.0.0 for every interface)"),
    _row("ui host empty", ["ui", "{results}", "--host", ""], "--host '': is not a host name or address (e.g. "
         "127.0.0.1, localhost, or 0.0.0.0 for every interface)"),
    # 6. results directories
    _row("export not results", "export notresults", f"notresults: {NOT_RESULTS}"),
    _row("report not results", "report notresults", f"notresults: {NOT_RESULTS}"),
    _row("ui not results", "ui notresults", f"notresults: {NOT_RESULTS}"),
    _row("export missing results", "export nothere", "nothere: no such results directory"),
    _row("report missing results", "report nothere", "nothere: no such results directory"),
    _row("ui missing results", "ui nothere", "nothere: no such results directory"),
    _row("dashboard not results", "dashboard notresults", f"notresults: {NOT_RESULTS}"),
    _row("dashboard without a study", "dashboard {results}", "{results}: no Optuna study there (optuna.db; a sweep "
         "started before ternsearch kept its study on disk has it only in Tune's state)"),
    _row("report of a file", "report afile", f"afile: {A_FILE}"),
    _row("ui of a file", "ui afile", f"afile: {A_FILE}"),
    _row("export of a file", "export afile",
         "afile:1: the top level is the value 'not a folder' (expected a mapping of keys: name:, then search:, "
         "train:, ...)"),
]
