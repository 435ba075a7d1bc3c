"""Labelled images to evaluate a model on (``ternsearch evaluate MODEL DATA``): uint8 ``N x 3 x 32 x 32`` images and
int64 labels from a CIFAR-10 file or folder of any size, or from an ImageFolder tree.

What ``DATA`` may be:

- a CIFAR-10 binary file (records of 1 label byte + 3,072 CHW pixel bytes; any number of records), or a folder
  holding such files: its ``test_batch.bin`` when there is one, else all its ``data_batch_*.bin``; a folder holding
  ``cifar-10-batches-bin/`` (what ``TERNSEARCH_DATA`` names) stands for that subfolder;
- a file of torchvision's python layout (a pickled dict of ``data`` N x 3,072 uint8 and ``labels``), or such a
  folder (``test_batch``, else ``data_batch_*``; ``cifar-10-batches-py/`` as above). These files are pickles, and
  unpickling runs whatever a crafted file asks for, so they are read with a restricted unpickler that builds only
  numpy arrays, dtypes, and plain containers of numbers and strings; anything else is refused;
- an ImageFolder tree: one subfolder a class, named by the CIFAR-10 class names (``airplane`` .. ``truck``; some
  may be absent, none may be another name), of 32 x 32 PNG or JPEG images read with Pillow and converted to RGB.

Every problem is a one-line :class:`~trainables.datafiles.DataError` naming the file or folder.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables.datafiles import _RECORD, BIN_DIR, BIN_TEST, PY_DIR, PY_TEST, DataError

__all__ = ["CLASSES", "EvalData", "read_eval_data"]

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip  (trainables.data.CIFAR10_CLASSES, without importing torch)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# What a CIFAR-10 python-layout pickle may build: numpy arrays and dtypes (protocol 2 pickles of bytes go through
# _codecs.encode). Nothing else is looked up, so a crafted file cannot call a function.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


@dataclass(frozen=True)
class EvalData:
    """``images`` uint8 N x 3 x 32 x 32 (RGB), ``labels`` int64 N in 0..9, ``layout`` what was read (words)."""

    images: np.ndarray
    labels: np.ndarray
    layout: str


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def _checked_labels(labels: np.ndarray, where: Path) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{where}: has labels outside 0..9 (a label {int(labels.max())}): not CIFAR-10")
    return labels.astype(np.int64)


def _read_bin_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(f"{path}: {raw.size} bytes, not a whole number of CIFAR-10 binary records "
                        f"({_RECORD} bytes each: 1 label byte, 3,072 pixel bytes)")
    raw = raw.reshape(-1, _RECORD)
    return raw[:, 1:].reshape(-1, 3, 32, 32).copy(), _checked_labels(raw[:, 0], path)


def _read_py_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _Restricted(io.BytesIO(path.read_bytes()), encoding="latin1").load()  # as torchvision reads them
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python-layout file ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 python-layout file (a pickled dict of data and labels)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"{path}: not a CIFAR-10 python-layout file (expected data: uint8 N x 3072 and N labels)")
    if not len(data):
        raise DataError(f"{path}: holds no records")
    return data.reshape(-1, 3, 32, 32).copy(), _checked_labels(np.asarray(labels), path)


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode every protocol >= 2 pickle starts with


def _read_files(files: list[Path], what: str) -> EvalData:
    parts = [(_read_py_file if _is_pickle(f) else _read_bin_file)(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    names = ", ".join(f.name for f in files)
    return EvalData(images, np.concatenate([p[1] for p in parts]), f"{what} ({names}, {len(images)} records)")


def _cifar_files(folder: Path) -> list[Path]:
    """The CIFAR-10 files of ``folder`` to evaluate on: the test batch, else the training batches; or none."""
    for layout in (BIN_DIR, PY_DIR):
        if (folder / layout).is_dir():
            return _cifar_files(folder / layout)
    for test, train in ((BIN_TEST, "data_batch_*.bin"), (PY_TEST, "data_batch_[0-9]")):
        if (folder / test).is_file():
            return [folder / test]
        batches = sorted(p for p in folder.glob(train) if p.is_file())
        if batches:
            return batches
    return []


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({str(exc).splitlines()[0][:160]})") from None
    if rgb.size != (32, 32):
        raise DataError(f"{path}: is {rgb.size[0]} x {rgb.size[1]} pixels (CIFAR-10 models take 32 x 32 images)")
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _read_image_folder(folder: Path, subfolders: list[Path]) -> EvalData:
    names = {p.name for p in subfolders}
    unexpected = sorted(names - set(CLASSES))
    if unexpected:
        missing = [c for c in CLASSES if c not in names]
        raise DataError(f"{folder}: class folders {', '.join(unexpected)} are not CIFAR-10 classes (allowed: "
                        f"{', '.join(CLASSES)}; missing: {', '.join(missing) or 'none'})")
    images, labels = [], []
    for index, name in enumerate(CLASSES):
        if name not in names:
            continue
        for path in sorted((folder / name).iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path}: not a PNG or JPEG file (a class folder holds only images: "
                                f"{', '.join(IMAGE_SUFFIXES)})")
            images.append(_read_image(path))
            labels.append(index)
    if not images:
        raise DataError(f"{folder}: its class folders hold no images")
    present = len({*labels})
    return EvalData(np.stack(images), np.asarray(labels, np.int64),
                    f"ImageFolder ({len(images)} images, {present} of {len(CLASSES)} classes)")


def read_eval_data(path: str | Path) -> EvalData:
    """The labelled images at ``path`` (see the module docstring for what it may be).

    Raises:
        DataError: one line naming the file or folder and what is wrong.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (give a CIFAR-10 file or folder, or an ImageFolder tree)")
    if path.is_file():
        return _read_files([path], "CIFAR-10 python layout" if _is_pickle(path) else "CIFAR-10 binary")
    files = _cifar_files(path)
    if files:
        return _read_files(files, "CIFAR-10 python layout" if _is_pickle(files[0]) else "CIFAR-10 binary")
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        return _read_image_folder(path, subfolders)
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise DataError(f"{path}: the folder is empty (give a CIFAR-10 file or folder, or an ImageFolder tree)")
    raise DataError(f"{path}: no recognised data layout: neither CIFAR-10 files (test_batch.bin, data_batch_*.bin, "
                    "or the python layout's test_batch, data_batch_N) nor class subfolders of images")
