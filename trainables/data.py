"""CIFAR-10 as in-memory uint8 tensors: locating, checking, reading, and splitting it.

The whole dataset is small (50,000 x 3 x 32 x 32 bytes = 154 MB for train), so it is read once per process into
a contiguous ``uint8`` tensor and augmented on whole batches (see :mod:`trainables.augment`); there is no
per-image ``Dataset``/``DataLoader`` on the hot path.

Three on-disk sources are understood, tried in this order inside the data folder (``data.root``, else the
``TERNSEARCH_DATA`` environment variable):

1. ``cifar-10-batches-bin/``: the official binary layout (``data_batch_1.bin`` .. ``data_batch_5.bin``,
   ``test_batch.bin``; 10,000 records of 1 label byte + 3072 CHW pixel bytes each), read with ``np.fromfile``.
2. ``cifar-10-batches-py/``: torchvision's python (pickle) layout, read through ``torchvision.datasets.CIFAR10``
   so its md5 integrity check applies (we never unpickle unverified files ourselves).
3. With ``download: true`` and neither present: ``torchvision.datasets.CIFAR10(download=True)`` into the folder
   (``~/.cache/ternsearch`` when no folder is configured), then read as (2).

Nothing happens at import time: Ray workers import this module, and torchvision is imported only when needed.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process download lock (see _download_lock)
    fcntl = None

import numpy as np
import torch
from torch import Tensor

from trainables.config import DataConfig
from trainables.datafiles import (  # the file checks live in a torch-free module; the public ones are re-exported
    _HOW_TO_GET,
    _PER_FILE,
    _RECORD,
    BIN_DIR,
    BIN_FILE_BYTES,
    BIN_TEST,
    BIN_TRAIN,
    DEFAULT_DOWNLOAD_ROOT,
    PY_DIR,
    DataError,
    PathLike,
    _data_dir,
    _layout,
    _not_found_message,
    check_data,
    resolve_root,
)

__all__ = [
    "BIN_DIR",
    "BIN_FILE_BYTES",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DEFAULT_DOWNLOAD_ROOT",
    "DataError",
    "PY_DIR",
    "Split",
    "check_data",
    "load_cifar10",
    "load_test",
    "make_split",
    "resolve_root",
    "split_indices",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Per-channel (R, G, B) statistics on the **0-255 scale**, so that normalization is one fused multiply-add on the
# raw uint8 values. These are the published statistics of the official (lossless) CIFAR-10 train set; our
# JPEG-rebuilt copy measures 125.27/122.93/113.86 and 62.53/61.91/66.46 (PROVENANCE.md), i.e. within 0.1 of the
# means and 0.2-0.5 below the stds. Using the official numbers keeps a model trained here usable on real CIFAR-10.
CIFAR10_MEAN = (125.307, 122.961, 113.8575)
CIFAR10_STD = (62.9932, 62.0887, 66.7048)

# ---------------------------------------------------------------------------------------------------- reading


def _read_bin(folder: Path, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Read official binary batch files into one contiguous uint8 [N,3,32,32] tensor and int64 [N] labels."""
    images = np.empty((len(names) * _PER_FILE, 3, 32, 32), dtype=np.uint8)  # filled in place: no 2x peak memory
    labels = np.empty(len(names) * _PER_FILE, dtype=np.int64)
    for i, name in enumerate(names):
        path = folder / BIN_DIR / name
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size != BIN_FILE_BYTES:
            raise DataError(f"{path} has {raw.size} bytes, expected {BIN_FILE_BYTES}; {_HOW_TO_GET}")
        raw = raw.reshape(_PER_FILE, _RECORD)
        rows = slice(i * _PER_FILE, (i + 1) * _PER_FILE)
        labels[rows] = raw[:, 0]
        images[rows] = raw[:, 1:].reshape(_PER_FILE, 3, 32, 32)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(f"{folder / BIN_DIR} has label bytes >= 10: not a CIFAR-10 binary file; {_HOW_TO_GET}")
    return torch.from_numpy(images), torch.from_numpy(labels)


def _tv_to_tensors(data: np.ndarray, targets: list[int]) -> tuple[Tensor, Tensor]:
    """torchvision's CIFAR10 keeps HWC uint8 numpy images; convert to contiguous CHW uint8 + int64 tensors."""
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    return images, torch.tensor(targets, dtype=torch.int64)


def _read_py(folder: Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """Read (optionally downloading first) the python layout through torchvision, which verifies md5 sums."""
    from torchvision.datasets import CIFAR10  # heavy import: only when this layout is used

    try:
        ds = CIFAR10(root=str(folder), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. ..."
        raise DataError(
            f"torchvision refused {folder / PY_DIR} ({str(err).splitlines()[0]}); {_HOW_TO_GET}"
        ) from err
    except OSError as err:  # network errors while downloading, unwritable folder, ...
        raise DataError(f"could not download CIFAR-10 into {folder}: {err}") from err
    return _tv_to_tensors(ds.data, ds.targets)


@contextlib.contextmanager
def _download_lock(folder: Path) -> Iterator[None]:
    """Serialize downloads into ``folder`` across processes (several Ray workers may start at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # not POSIX: no cross-process lock, torchvision's own re-check still applies
        yield
        return
    with open(folder / ".ternsearch-download.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, train: bool) -> tuple[Tensor, Tensor]:
    path = Path(folder)
    layout = _layout(path)
    if layout == BIN_DIR:
        return _read_bin(path, BIN_TRAIN if train else (BIN_TEST,))
    if layout == PY_DIR:
        return _read_py(path, train)
    raise DataError(_not_found_message(path))


def load_cifar10(root: Optional[PathLike], train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """Load one CIFAR-10 split as tensors, cached per process.

    Args:
        root: The data folder, or None for ``$TERNSEARCH_DATA`` (``~/.cache/ternsearch`` when downloading
            and neither is set).
        train: The 50,000 training images if true, else the 10,000 test images (read only when asked for).
        download: Download the python layout with torchvision when no complete layout is present.

    Returns:
        ``(images, labels)``: contiguous uint8 ``[N, 3, 32, 32]`` (RGB, CHW) and int64 ``[N]`` in ``0..9``.
        The tensors are shared by all callers in the process (``functools.lru_cache`` on the resolved folder and
        ``train``): treat them as read-only; index or ``clone()`` them before modifying.

    Raises:
        DataError: The data is missing (and ``download`` is false), incomplete, corrupt, or the download failed.
    """
    folder = _data_dir(root, download)
    if folder is None:
        raise DataError(_not_found_message(None))
    folder = folder.resolve()
    if download and _layout(folder) is None:
        try:
            with _download_lock(folder):
                if _layout(folder) is None:  # another process may have finished it while we waited
                    _read_py(folder, train=True, download=True)  # fetches and extracts both splits
        except OSError as err:  # e.g. the folder cannot be created or locked
            raise DataError(f"could not download CIFAR-10 into {folder}: {err}") from err
    return _load_cached(str(folder), bool(train))


# --------------------------------------------------------------------------------------------------- splitting


def _largest_remainder(sizes: Tensor, total: int, denom: int, generator: torch.Generator) -> Tensor:
    """Integer counts summing to ``total``, each the floor or ceil of its exact share ``sizes * total / denom``.

    Exact integer arithmetic (no float rounding can break the sum). The leftover units go to the largest
    remainders; ties (e.g. equal class sizes) are broken in a seeded random order so that no class is
    systematically favoured across seeds.
    """
    scaled = sizes.to(torch.int64) * int(total)  # <= 50,000 * 50,000: far from int64 overflow
    counts, remainders = scaled // denom, scaled % denom
    extra = int(total) - int(counts.sum())
    if extra > 0:
        order = torch.randperm(len(sizes), generator=generator)
        ranked = order[torch.sort(remainders[order], descending=True, stable=True).indices]
        counts[ranked[:extra]] += 1
    return counts


def split_indices(
    labels: Tensor, val_fraction: float, subset: Optional[int], seed: int
) -> tuple[Tensor, Tensor]:
    """Seeded, stratified, disjoint train/validation indices into ``labels``.

    Each class contributes in proportion to its size (largest-remainder rounding, so every class count is within
    1 of its exact share and the totals are exact). With ``subset``, a stratified subset of that many images is
    drawn first and then split. The same arguments always give the same result (a private ``torch.Generator``;
    the global RNG is untouched).

    Args:
        labels: int64 ``[N]`` class labels (any device; the split is computed on the CPU).
        val_fraction: Fraction of the (subset of the) images that goes to validation, in [0, 1); with 0 every
            image is a training image and the validation indices are empty.
        subset: Number of images to keep before splitting, or None for all.
        seed: Seed of the split.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 CPU index tensors, disjoint.

    Raises:
        DataError: ``subset`` exceeds the number of images, or a class ends up with no train or no val images.
    """
    labels = labels.detach().to("cpu", torch.int64)
    n = labels.numel()
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and not 0 < subset <= n:
        raise DataError(f"data.subset ({subset}) must be between 1 and the number of training images ({n})")
    generator = torch.Generator().manual_seed(int(seed))
    classes, class_sizes = torch.unique(labels, return_counts=True)
    # Each class's indices, in a seeded random order; taking prefixes below is sampling without replacement.
    members = []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).flatten()
        members.append(idx[torch.randperm(idx.numel(), generator=generator)])

    keep = class_sizes
    total = n if subset is None else subset
    if subset is not None:
        keep = _largest_remainder(class_sizes, subset, n, generator)
    # Round the total first, then distribute: the val set has exactly round(val_fraction * total) images.
    n_val = int(round(val_fraction * total))
    val_counts = _largest_remainder(keep, n_val, total, generator)
    train_counts = keep - val_counts

    for c, v, t in zip(classes.tolist(), val_counts.tolist(), train_counts.tolist()):
        if (v == 0 and n_val) or t == 0:
            which = "validation" if v == 0 else "training"
            name = CIFAR10_CLASSES[c] if 0 <= c < len(CIFAR10_CLASSES) else str(c)
            raise DataError(
                f"splitting {total} images with val_fraction {val_fraction} leaves class {c} ({name}) with no "
                f"{which} images; use a larger data.subset or a val_fraction nearer 0.5"
            )
    val = torch.cat([m[:v] for m, v in zip(members, val_counts.tolist())])
    train = torch.cat([m[v:k] for m, v, k in zip(members, val_counts.tolist(), keep.tolist())])
    return torch.sort(train).values, torch.sort(val).values


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==; instances compare by identity
class Split:
    """The training and validation images of one run, uint8 ``[N,3,32,32]`` and int64 ``[N]``, CPU, contiguous.

    ``eval_on`` says what the per-epoch ``val_*`` metrics measure: ``"val"``, the held-out split, or ``"train"``
    when ``data.val_fraction`` is 0 and nothing is held out; then ``val_x``/``val_y`` *are* the training tensors
    (the same objects, evaluated without augmentation)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    eval_on: str = "val"


def _split(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor) -> Split:
    if val_y.numel() == 0:  # val_fraction 0: no held-out images, the val_* metrics are on the training images
        return Split(train_x, train_y, train_x, train_y, eval_on="train")
    return Split(train_x, train_y, val_x, val_y)


def _bin_train_records(folder: Path) -> list[np.memmap]:
    """The five training batch files, memory-mapped read-only as ``[10000, 3073]`` records (label, pixels)."""
    maps = []
    for name in BIN_TRAIN:
        path = folder / BIN_DIR / name
        size = path.stat().st_size
        if size != BIN_FILE_BYTES:
            raise DataError(f"{path} has {size} bytes, expected {BIN_FILE_BYTES}; {_HOW_TO_GET}")
        maps.append(np.memmap(path, dtype=np.uint8, mode="r", shape=(_PER_FILE, _RECORD)))
    return maps


def _split_from_bin(folder: Path, cfg: DataConfig) -> Split:
    """``make_split`` for the binary layout reading only the label bytes and the chosen images: the files are
    memory-mapped, so the page cache shares them between all the trials of a node, and a run on a subset copies
    just its rows instead of all 50,000 images. The same tensors as indexing the full load (tested)."""
    maps = _bin_train_records(folder)
    labels = torch.from_numpy(np.concatenate([m[:, 0] for m in maps]).astype(np.int64))
    if int(labels.max()) >= len(CIFAR10_CLASSES):
        raise DataError(f"{folder / BIN_DIR} has label bytes >= 10: not a CIFAR-10 binary file; {_HOW_TO_GET}")
    train_idx, val_idx = split_indices(labels, cfg.val_fraction, cfg.subset, cfg.split_seed)

    def images(idx: Tensor) -> Tensor:
        idx_np = idx.numpy()
        out = np.empty((len(idx_np), _RECORD - 1), dtype=np.uint8)
        for f, records in enumerate(maps):
            chosen = np.nonzero(idx_np // _PER_FILE == f)[0]
            if len(chosen):
                out[chosen] = records[idx_np[chosen] % _PER_FILE, 1:]
        return torch.from_numpy(out.reshape(len(idx_np), 3, 32, 32))

    return _split(images(train_idx), labels[train_idx], images(val_idx), labels[val_idx])


def make_split(cfg: DataConfig) -> Split:
    """Load the training set and carve out the seeded, stratified validation split of ``cfg``.

    Args:
        cfg: The data section (``root``, ``download``, ``val_fraction``, ``subset``, ``split_seed``).

    Returns:
        A :class:`Split` whose tensors are fresh copies (safe to move to a device or modify); with
        ``val_fraction`` 0, ``val_x``/``val_y`` are ``train_x``/``train_y`` (``eval_on == "train"``).

    Raises:
        DataError: See :func:`load_cifar10` and :func:`split_indices`.
    """
    folder = _data_dir(cfg.root, cfg.download)
    if folder is not None and _layout(folder.resolve()) == BIN_DIR:
        return _split_from_bin(folder.resolve(), cfg)
    images, labels = load_cifar10(cfg.root, train=True, download=cfg.download)
    train_idx, val_idx = split_indices(labels, cfg.val_fraction, cfg.subset, cfg.split_seed)
    return _split(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])


def load_test(cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """The 10,000 test images and labels (uint8 ``[N,3,32,32]``, int64 ``[N]``; shared, treat as read-only).

    Only for final evaluation of a retrained model: the search must use :func:`make_split`'s validation set.
    Note that this copy's test order is a seeded shuffle, not the original order (see PROVENANCE.md).
    """
    return load_cifar10(cfg.root, train=False, download=cfg.download)
