"""One exception tree. The CLI prints any ``TernsearchError`` as one line and exits 1 (``--debug`` shows the
traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations

from typing import Optional

__all__ = ["TernsearchError", "SpecError", "PreflightError", "ResultsError", "RecordError", "OutputError",
           "TrackingError", "TrainingError", "SweepFailedError", "UsageError"]


class TernsearchError(Exception):
    """Base of every error meant for the user."""


class SpecError(TernsearchError):
    """A sweep or train file is invalid: ``FILE:LINE: key: what is wrong (what is allowed)``."""

    def __init__(self, file: str, line: Optional[int], key: str, message: str):
        self.file, self.line, self.key, self.message = str(file), line, key, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def __reduce__(self):
        return (SpecError, (self.file, self.line, self.key, self.message))


class PreflightError(TernsearchError):
    """The spec is valid but cannot run here (data missing, resources do not fit, storage not writable...)."""


class ResultsError(TernsearchError):
    """A results directory is missing, incomplete, or belongs to another spec."""


class RecordError(ResultsError):
    """A record file of a results directory is torn or hand-edited: ``WHERE: PROBLEM; HINT``, ``WHERE`` the file
    (``FILE:LINE`` for a line of ``history.jsonl``), ``HINT`` what to do (or what was done instead)."""

    def __init__(self, where: str, problem: str, hint: str = ""):
        self.where, self.problem, self.hint = str(where), problem, hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}" + (f"; {self.hint}" if self.hint else "")

    def __reduce__(self):
        return (RecordError, (self.where, self.problem, self.hint))

    def with_hint(self, hint: str) -> "RecordError":
        return RecordError(self.where, self.problem, hint)


class OutputError(TernsearchError):
    """An output path would overwrite a sweep's records or its spec file, or cannot be written (see
    ``ternsearch.results.outputs``)."""


class TrackingError(TernsearchError):
    """The MLflow tracking store cannot be reached or used."""


class TrainingError(TernsearchError):
    """A training run failed in a way a retry would repeat (it diverged, it ran out of memory)."""


class SweepFailedError(TernsearchError):
    """The sweep ran but could not go on: its first trials all failed the same way, or every trial failed."""


class UsageError(TernsearchError):
    """A command-line argument is wrong (argparse's own errors included): ``--ARG VALUE: what is wrong (what is
    allowed)``, or ``ternsearch CMD: ...`` for what argparse finds."""
