"""Which trials of a sweep are best: on its metric (``best_trial``) and, with several objectives, the Pareto
front (``pareto_trials``). The sweep's summary, ``export`` and the report's ranking read trials.json the same way."""

from __future__ import annotations

from typing import Optional, Sequence

from ternsearch.numbers import is_number

__all__ = ["best_trial", "pareto_front", "pareto_trials"]


def best_trial(trials: dict, metric: str, mode: str, objectives: Optional[list] = None) -> Optional[dict]:
    """The trial with the best last-reported metric; completed trials first, then any that reported.

    With several ``objectives`` (``[[name, mode], ...]``, the first being ``metric``), ties on the first are broken
    by the next ones in order, so the choice is never a trial another completed trial beats on every objective;
    a tie on all of them goes to the earliest trial (its ``number``)."""
    rest = [(n, m) for n, m in (objectives or []) if n != metric]

    def signed(value, m):
        if not isinstance(value, (int, float)):
            return float("-inf")
        return value if m == "max" else -value

    def key(t):
        last = t["last"]
        # A tie on every objective goes to the earliest trial, as the report ranks them (trials.json is keyed
        # by trial id, whose order says nothing).
        number = t.get("number")
        return (signed(last.get(metric), mode), *(signed(last.get(n), m) for n, m in rest),
                -number if isinstance(number, int) else float("-inf"))

    reported = [t for t in trials.values() if isinstance(t.get("last", {}).get(metric), (int, float))
                and t["status"] != "failed"]
    completed = [t for t in reported if t["status"] == "completed"]
    pool = completed or reported
    return max(pool, key=key) if pool else None


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool] = (True, True)) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    A point dominates another when it is at least as good in every coordinate and better in one; equal points
    do not dominate each other, so ties on the front are all kept. Points with a NaN coordinate are ignored.
    """
    sign = [1.0 if m else -1.0 for m in maximize]
    pts = [(i, [s * float(x) for s, x in zip(sign, p)]) for i, p in enumerate(points)
           if len(p) == len(sign) and all(is_number(float(x)) for x in p)]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in pts if not any(dominates(q, p) for j, q in pts if j != i)]


def pareto_trials(trials: dict, objectives: list[list[str]]) -> list[dict]:
    """The completed trials no other completed trial beats on every objective (``[[name, mode], ...]``), in
    trial order. ASHA-stopped trials are left out: their values are from an earlier epoch than the others'."""

    def has_all(t):
        return all(isinstance(t.get("last", {}).get(name), (int, float)) for name, _ in objectives)

    done = [t for t in trials.values() if t["status"] == "completed" and has_all(t)]
    front = pareto_front([[t["last"][name] for name, _ in objectives] for t in done],
                         maximize=[mode == "max" for _, mode in objectives])
    return [done[i] for i in front]
