"""What counts as a number, and how one is shown: the one home of these tests for spec checks, reports and logs.

The lowest layer with ``errors``: standard library only.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_int", "is_number", "fmt_number"]


def is_int(v: Any) -> bool:
    """A whole number written as one: ``True`` is a bool and ``2.0`` a float, neither is an int."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float. Bools (YAML ``true``), NaN and infinities are not numbers here: none of them can
    bound a range, be plotted on an axis or ranked."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_number(v: Any, digits: int) -> str:
    """A value for people: a float to ``digits`` significant digits (``0.0123``, ``1.2e-05``), anything else
    (an int, a word, None) as ``str`` gives it."""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
