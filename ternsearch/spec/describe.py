"""Configs in words, for file headers and run tags."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["CIFAR10_TRAIN_IMAGES", "data_line", "metric_words"]

CIFAR10_TRAIN_IMAGES = 50_000  # the training set a retraining without data.subset uses


def data_line(data: dict[str, Any]) -> str:
    """What a train file's ``data:`` section trains on, in words (the exported file's header)."""
    fraction = float(data.get("val_fraction", 0.1))
    total = data.get("subset") or CIFAR10_TRAIN_IMAGES
    if fraction == 0:
        whole = "the whole training set" if total == CIFAR10_TRAIN_IMAGES else f"a subset of {total:,} images"
        return (f"Trains on {whole} ({total:,} images, no validation split): the per-epoch val_* metrics are "
                "measured on the training images (eval_on: train); test accuracy is measured at the end.")
    n_val = int(round(fraction * total))  # as trainables.data.split_indices rounds it
    return (f"Trains on the sweep's split: {total - n_val:,} of {total:,} images"
            + (f" (data.subset {total:,})" if data.get("subset") else "")
            + f", {n_val:,} held out for validation (val_fraction {fraction:g}).")


def metric_words(objectives: Sequence[Any], raw: Any) -> str:
    """The objectives as ``val_loss (min, inferred from its name)``, saying which modes the file left out.

    ``raw`` is the file's own ``metric:`` value (a mapping, a list of them, or None when the file has none)."""
    written = raw if isinstance(raw, list) else [raw]
    out = []
    for i, m in enumerate(objectives):
        given = written[i] if i < len(written) and isinstance(written[i], dict) else {}
        why = "" if "mode" in given else ", inferred from its name"
        out.append(f"{m.name} ({m.mode}{why})")
    return ", ".join(out)
