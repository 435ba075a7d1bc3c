"""The fuzzing pass's oracle and its worker client.

``judge(case, result)`` lists what is wrong with one run of the CLI, each as ``(class, detail)``; a class is the
shape of the problem (an exception type and the innermost project frame; a message with its paths, numbers and
quoted values blanked), so many inputs that hit one bug make one finding. A run is wrong when

- an exception escaped ``main``, or stderr holds a traceback (outside ``--debug``) or a library's log line;
- the exit code is not 0 or 1 (argparse's usage errors exit 2), or it hung (no answer within the case timeout);
- it exited 1 with stderr not exactly one line (the CLI's own ``warning: ...`` lines aside);
- it exited 0, or got as far as training, a real sweep or the MLflow server, on an input that is certainly
  invalid (the 'must refuse' rules: ``helpers_fuzz_rules`` for files, the labels of ``helpers_fuzz_argv``);
- a file that was in the workspace before changed (a command's own outputs aside), ``validate`` or
  ``sweep --dry-run`` wrote a file, Ray was left running, or a password from the command line was printed.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from helpers_fuzz_argv import SPEC, SWEEP, TRAIN, Case
from helpers_fuzz_rules import NotParsed, parse_spec_bytes, spec_violation
from helpers_fuzz_spec import describe_results_op

__all__ = ["Worker", "judge", "Findings"]

WORKER = Path(__file__).with_name("helpers_fuzz_worker.py")
REGENERABLE = ("best.yaml", "best.tern", "report.html", "trials.csv", "trials.parquet")
_LOG_LINES = [
    (re.compile(r"^\s*File \"[^\"]+\", line \d+"), "a traceback frame"),
    (re.compile(r"\b[A-Z]\w*Warning: "), "a Python warning"),
    (re.compile(r"^\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d"), "a timestamped log line"),
    (re.compile(r"^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)[: ]"), "a logging line"),
    (re.compile(r"^\[[A-Z][ \d]"), "a C++/Optuna log line"),
    (re.compile(r"^\(\w+ pid=\d+"), "a Ray worker line"),
]
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b", re.M)


# ------------------------------------------------------------------------------------------------ the worker
class Worker:
    """The long-lived ``helpers_fuzz_worker.py`` process; restarted after a hang or a crash."""

    def __init__(self, base: Path, env: dict, timeout: float = 15.0, start_timeout: float = 300.0):
        self.base, self.env, self.timeout, self.start_timeout = base, env, timeout, start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.buf = b""
        self.starts = 0

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.buf = b""
        with open(self.base / "worker.stderr", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-u", str(WORKER), str(self.base)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=self.env, cwd=self.base,
                                         start_new_session=True)
        self.starts += 1
        line = self._readline(self.start_timeout)
        if line is None or not json.loads(line).get("ready"):
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start: {self.log_tail()}")

    def _readline(self, timeout: float) -> Optional[bytes]:
        end, fd = time.time() + timeout, self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.time()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def log_tail(self) -> str:
        path = self.base / "worker.stderr"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def run(self, wire: dict) -> dict:
        if self.proc is None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps(wire) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(self.timeout)
        if line is not None:
            return json.loads(line)
        hung = self.proc.poll() is None
        rc = self.stop()
        return {"hang": self.timeout} if hung else {"crash": rc, "log_tail": self.log_tail()[-600:]}

    def stop(self) -> Optional[int]:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            proc.stdin.close()
            return proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and whatever it started (its own session)
            except ProcessLookupError:
                pass
            return proc.wait()


# ------------------------------------------------------------------------------------------------ the oracle
def shape(text: str, width: int = 90) -> str:
    """A message's shape: paths, quoted values and numbers blanked, so one bug's messages compare equal."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", text.strip())
    text = re.sub(r"(?:[\w.~-]*/[^\s:,;()]*)+", "PATH", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", text)
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= width else text[:width] + "..."


def _project_frame(frames: list) -> str:
    own = [f for f in frames if f.startswith(("ternsearch/", "trainables/"))]
    return (own or frames or ["?"])[-1]


def _traceback_class(stderr: str) -> str:
    block = stderr[stderr.index("Traceback"):]
    frames = [f"{os.path.relpath(f, os.getcwd()) if f.startswith('/') else f}:{n} in {fn}"
              for f, n, fn in _FRAME.findall(block)]
    frames = [re.sub(r"^.*?(ternsearch/|trainables/)", r"\1", f) for f in frames]
    names = _EXC.findall(block)
    return f"traceback on stderr: {names[-1].rsplit('.', 1)[-1] if names else '?'} at {_project_frame(frames)}"


def file_reason(case: Case) -> str:
    """Why the file a validate/sweep/train case names is certainly invalid for that command, or ''."""
    kind, cmd = case.file_kind, case.command
    if kind == SPEC:
        why = spec_violation(case.spec)
        if why:
            return f"spec: {why}"
        try:
            sweep = "search" in parse_spec_bytes(case.spec)
        except NotParsed:
            return ""
        kind = SWEEP if sweep else TRAIN
    if kind == SWEEP:
        return "a sweep file given to train" if cmd == "train" else ""
    if kind == TRAIN:
        return "a train file given to sweep" if cmd == "sweep" else ""
    return f"the file: {kind}"


def _allowed(path: str, case: Case) -> bool:
    parts = Path(path).parts
    if len(parts) == 3 and parts[0] == "results" and parts[2] in REGENERABLE:
        return True
    for out in case.outputs:
        out = os.path.normpath(out) if out else ""
        if out and (path == out or path.startswith(out.rstrip("/") + "/")):
            return True
    return False


def _pattern(path: str) -> str:
    return re.sub(r"^results/[^/]+/", "results/*/", path)


def judge(case: Case, res: dict) -> list[tuple[str, str]]:
    if "skipped" in res:
        return []
    if "harness_error" in res:
        return [(f"harness error: {shape(res['harness_error'], 60)}", " | ".join(res.get("frames", [])[-3:]))]
    if "hang" in res:
        return [(f"hang: `{case.command}` gave no answer within {res['hang']:g} s", "")]
    if "crash" in res:
        return [(f"the process died: `{case.command}` (exit {res['crash']})", res.get("log_tail", ""))]
    found, code, err = [], res["code"], res["stderr"]
    before = case.argv[:case.argv.index(case.command)] if case.command in case.argv else []
    debug = any(len(a) >= 3 and "--debug".startswith(a) for a in before)  # argparse takes --deb for --debug
    if code == "raised":
        found.append((f"uncaught {res['exc_type']} at {_project_frame(res['frames'])}", res.get("exc_msg", "")))
    elif "Traceback" in err and not (debug and code == 1):
        found.append((_traceback_class(err), err.strip().splitlines()[-1][:300]))
    elif not (debug and code == 1):
        for line in err.splitlines():
            what = next((w for rx, w in _LOG_LINES if rx.search(line)), None)
            if what:
                found.append((f"library output on stderr ({what}): {shape(line, 60)}", line[:300]))
                break
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    if code == 2 and "usage:" in err:
        msg = next((ln for ln in reversed(lines) if ": error: " in ln), lines[-1] if lines else "")
        kind = re.sub(r"^argument [^:]+: ", "", msg.split(": error: ")[-1]).split(":")[0]
        found.append((f"argparse usage error (exit 2, usage text and error line): {shape(kind, 50)}",
                      f"{len(lines)} lines: {msg[:300]}"))
    elif code not in (0, 1, "reached", "raised"):
        found.append((f"exit code {code} from `{case.command}`", err[-300:]))
    elif code == 1 and res.get("stderr_lines", len(lines)) != 1 and not debug and not found:  # not a traceback
        first = lines[0] if lines else "(nothing)"
        n = res.get("stderr_lines", len(lines))
        found.append((f"exit 1 with {n} stderr lines: {shape(first, 60)}", err[:300]))
    if code in (0, "reached"):
        why = (file_reason(case) if case.command in ("validate", "sweep", "train") else "") or \
            next(iter(case.reasons()), "")
        if why:
            how = "exit 0" if code == 0 else res.get("reached", "reached")
            found.append((f"accepted an invalid input ({how}): `{case.command}` {shape(why, 70)}", why))
    for path in res.get("changed", []):
        if not _allowed(path, case):
            found.append((f"`{case.command}` changed or deleted a file that was there: {_pattern(path)}", path))
            break
    if case.command in ("validate", "sweep") and res.get("created"):
        found.append((f"`{case.command}` wrote files: {_pattern(res['created'][0])}", ", ".join(res["created"][:5])))
    if res.get("ray_left_running"):
        found.append((f"Ray left running after `{case.command}`", ""))
    if "s3cr3tpw" in err + res.get("stdout", "") and code != 2:  # argparse's usage errors echo the argv itself
        found.append((f"a password from the command line was printed by `{case.command}`", ""))
    return found


# ----------------------------------------------------------------------------------------------- the findings
def _uses(case: Case) -> tuple[bool, bool]:
    return any(a in ("spec.yaml", "link.yaml") or a.endswith("=spec.yaml") for a in case.argv), \
        any("results/mut" in a for a in case.argv)


class Findings:
    """Problems by class, each with its count and its (up to) 3 smallest reproducers."""

    def __init__(self):
        self.classes: dict[str, dict] = {}

    def add(self, cls: str, detail: str, case: Case, res: dict) -> None:
        uses_spec, uses_results = _uses(case)
        rec = {"argv": case.argv, "env": case.env, "code": res.get("code"), "detail": detail,
               "stderr_head": res.get("stderr", "")[:800], "stderr_tail": res.get("stderr", "")[-800:],
               "spec_ops": list(case.spec_ops) if uses_spec else [],
               "spec": case.spec.decode("utf-8", "backslashreplace")[:4000] if uses_spec else "",
               "results_op": describe_results_op(case.results_op) if uses_results else "",
               "results_op_raw": case.results_op if uses_results else {}}
        size = len(json.dumps(case.argv)) + (len(case.spec) + 40 * len(case.spec_ops) if uses_spec else 0)
        entry = self.classes.setdefault(cls, {"count": 0, "examples": []})
        entry["count"] += 1
        if all(e["argv"] != rec["argv"] or e["spec"] != rec["spec"] for _, e in entry["examples"]):
            entry["examples"] = sorted(entry["examples"] + [(size, rec)], key=lambda x: x[0])[:3]

    def summary(self, stats: dict) -> str:
        head = "fuzzing pass: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
        out = [head, f"{len(self.classes)} classes of failure" + (":" if self.classes else "")]
        for i, (cls, entry) in enumerate(sorted(self.classes.items(), key=lambda kv: -kv[1]["count"]), 1):
            rec = entry["examples"][0][1]
            out.append(f"{i:2d}. [{entry['count']}x] {cls}")
            out.append(f"      argv: {ascii(rec['argv'])}" + (f" env: {rec['env']}" if rec["env"] else ""))
            if rec["spec_ops"]:
                out.append(f"      spec.yaml: {' ; '.join(rec['spec_ops'])}")
            if rec["results_op"]:
                out.append(f"      {rec['results_op']}")
            out.append(f"      -> {ascii(rec['detail'][:200])}")
        return "\n".join(out)

    def dump(self, path: str, stats: dict) -> None:
        Path(path).write_text(json.dumps({"stats": stats, "classes": {
            cls: {"count": e["count"], "examples": [r for _, r in e["examples"]]} for cls, e in self.classes.items()}},
            indent=1, ensure_ascii=True))
