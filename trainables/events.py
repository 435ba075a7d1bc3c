"""TensorBoard event files of one run: every epoch's scalars, and histograms of the latent weights every few epochs.

``tensorboard --logdir DIR`` shows them. The loop opens an ``EpochEvents`` on rank 0 only, when it is given a
directory (a sweep's trial directory, a ``ternsearch train`` run directory), writes each epoch's events before
it reports the epoch (Ray Tune may stop a trial inside that report), and flushes them at once: a run killed at
any point has every epoch it reported on disk. Nothing is written per step.

A resumed run appends a new event file to the same directory, with ``purge_step`` set to its first epoch: an
earlier file's events from that epoch on (written by a run that died before its checkpoint of them was kept)
are dropped by TensorBoard's readers, so each epoch has one value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["HISTOGRAM_EVERY", "LAYER_STATS", "SCALARS", "EpochEvents", "histogram_epoch", "scalar_tags"]

# Epoch metric -> TensorBoard tag. TensorBoard groups its cards by the tag's first path component.
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "lr/lr",
    "ternary_lr": "lr/ternary",
    "ternary_zero_frac": "ternary/zero_frac",
    "quant_mix": "ternary/quant_mix",
    "images_per_sec": "speed/images_per_sec",
    "epoch_seconds": "speed/epoch_seconds",
}
# Per ternary layer, from the metrics ``ternary/LAYER/STAT``: tag ``ternary_STAT/LAYER`` (a card group per STAT).
LAYER_STATS = ("neg_frac", "zero_frac", "pos_frac", "scale")
# Histograms of each ternary layer's latent weights at the first epoch, every HISTOGRAM_EVERY-th, and the last.
# A histogram costs a copy of the layer's weights to numpy; per epoch it would be most of the file's size.
HISTOGRAM_EVERY = 5


def scalar_tags(metrics: dict[str, Any]) -> dict[str, float]:
    """The epoch's scalars, by TensorBoard tag (see ``SCALARS`` and ``LAYER_STATS``)."""
    tags = {tag: float(metrics[name]) for name, tag in SCALARS.items() if name in metrics}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "ternary" and parts[2] in LAYER_STATS:
            tags[f"ternary_{parts[2]}/{parts[1]}"] = float(value)
    return tags


def histogram_epoch(epoch: int, first_epoch: int, last: bool) -> bool:
    """Whether epoch ``epoch`` writes histograms: the run's first epoch (also a resumed run's), every
    ``HISTOGRAM_EVERY``-th, and its last one (``last``: all epochs done, or early stopping ended it)."""
    return epoch == first_epoch or epoch % HISTOGRAM_EVERY == 0 or last


class EpochEvents:
    """An event file in ``log_dir`` for a run whose first epoch here is ``first_epoch`` (1 unless resumed)."""

    def __init__(self, log_dir: str | Path, first_epoch: int) -> None:
        self.log_dir, self.first_epoch = Path(log_dir), first_epoch
        self._writer = None  # opened with the first epoch: a run that fails before it leaves no file (no empty run)

    def epoch(self, epoch: int, metrics: dict[str, Any], model, last: bool) -> None:
        """Write epoch ``epoch``'s scalars (and its histograms, see ``histogram_epoch``), then flush."""
        # torch's writer: the tensorboard package underneath, imported in a run only (torch is already loaded)
        from torch.utils.tensorboard import SummaryWriter

        from trainables.ternary import ternary_modules  # torch: in a run only

        if self._writer is None:
            # flush_secs: the writer's own timer is not needed, each epoch flushes (see the module's docstring)
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.first_epoch, flush_secs=3600)
        for tag, value in scalar_tags(metrics).items():
            self._writer.add_scalar(tag, value, epoch)
        if histogram_epoch(epoch, self.first_epoch, last):
            for name, module in ternary_modules(model):
                self._writer.add_histogram(f"latent_weights/{name}", module.weight.detach().float().cpu(), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
