"""trainables.data: reading the real CIFAR-10 copy (TERNSEARCH_DATA), checking it, and splitting it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.config import DataConfig
from trainables.data import DataError


@pytest.fixture(scope="module")
def train(data_root):
    return D.load_cifar10(data_root, train=True)


# ------------------------------------------------------------------------------------------- the real data


def test_train_set_shapes_dtypes_and_class_counts(train):
    x, y = train
    assert x.shape == (50_000, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.shape == (50_000,) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [5000] * 10
    # Per-file class counts of data_batch_1, as published for the official file (PROVENANCE.md).
    assert torch.bincount(y[:10_000], minlength=10).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def test_first_train_labels_match_provenance_visual_check(train):
    names = [D.CIFAR10_CLASSES[i] for i in train[1][:10].tolist()]
    assert names == ["frog", "truck", "truck", "deer", "automobile", "automobile", "bird", "horse", "ship", "cat"]


def test_channel_order_matches_provenance_statistics(train):
    # PROVENANCE.md: train means 125.27 / 122.93 / 113.86 (R, G, B). A plane mix-up would swap them.
    mean = train[0].sum(dim=(0, 2, 3), dtype=torch.int64).double() / (50_000 * 32 * 32)
    assert torch.allclose(mean, torch.tensor([125.27, 122.93, 113.86], dtype=torch.float64), atol=0.01)
    assert all(abs(m - s) < 0.1 for m, s in zip(mean.tolist(), D.CIFAR10_MEAN))


def test_test_set(data_root):
    x, y = D.load_test(DataConfig(root=str(data_root)))
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [1000] * 10


def test_load_is_cached_per_process_and_env_root_is_the_same_data(train, data_root, monkeypatch):
    again = D.load_cifar10(str(data_root), train=True)
    assert again[0] is train[0] and again[1] is train[1]
    monkeypatch.setenv("TERNSEARCH_DATA", str(data_root))
    assert D.load_cifar10(None, train=True)[0] is train[0]


# ---------------------------------------------------------------------------------------- locating/checking


def test_resolve_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TERNSEARCH_DATA", str(tmp_path / "env"))
    assert D.resolve_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert D.resolve_root(None) == tmp_path / "env"
    assert D.resolve_root("~/x") == Path.home() / "x"
    monkeypatch.delenv("TERNSEARCH_DATA")
    assert D.resolve_root(None) is None


def test_check_data_accepts_the_real_folder(data_root):
    D.check_data(DataConfig(root=str(data_root)))


def _fake_bin(folder: Path, skip: tuple[str, ...] = (), sizes: dict | None = None) -> Path:
    """Sparse files of the right size: check_data reads names and sizes only."""
    bin_dir = folder / "cifar-10-batches-bin"
    bin_dir.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        if name not in skip:
            with open(bin_dir / name, "wb") as f:
                f.truncate((sizes or {}).get(name, D.BIN_FILE_BYTES))
    return folder


def test_missing_folder_raises_with_folder_and_instructions(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        D.check_data(DataConfig(root=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "TERNSEARCH_DATA" in msg and "download" in msg and "\n" not in msg
    with pytest.raises(DataError):
        D.load_cifar10(missing, train=True)
    monkeypatch.delenv("TERNSEARCH_DATA", raising=False)
    with pytest.raises(DataError, match="TERNSEARCH_DATA"):
        D.check_data(DataConfig())
    with pytest.raises(DataError, match="neither cifar-10-batches-bin"):
        D.check_data(DataConfig(root=str(tmp_path)))


def test_missing_or_short_file_is_named(tmp_path):
    root = _fake_bin(tmp_path / "a", skip=("data_batch_3.bin",))
    with pytest.raises(DataError) as err:
        D.check_data(DataConfig(root=str(root)))
    assert "data_batch_3.bin" in str(err.value) and "data_batch_2.bin" not in str(err.value)
    assert str(root) in str(err.value)
    with pytest.raises(DataError, match="data_batch_3.bin"):
        D.load_cifar10(root, train=False)  # test files present, train incomplete: still refused, nothing cached

    root = _fake_bin(tmp_path / "b", sizes={"test_batch.bin": 1234})
    with pytest.raises(DataError, match=r"test_batch.bin \(1234 bytes"):
        D.check_data(DataConfig(root=str(root)))


def test_pointing_at_the_bin_folder_itself_says_use_the_parent(data_root):
    with pytest.raises(DataError, match="parent"):
        D.check_data(DataConfig(root=str(data_root / "cifar-10-batches-bin")))


def test_download_true_skips_the_check(tmp_path):
    D.check_data(DataConfig(root=str(tmp_path / "empty"), download=True))  # the loader will download


# ---------------------------------------------------------------------------------------- python layout


def _fake_py(folder: Path, n: int = 4) -> tuple[np.ndarray, list[int]]:
    """A tiny cifar-10-batches-py with torchvision's pickle format (not the official md5 sums)."""
    py = folder / "cifar-10-batches-py"
    py.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6 * n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 6 * n)]
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        with open(py / name, "wb") as f:
            pickle.dump({"data": images[k * n:(k + 1) * n], "labels": labels[k * n:(k + 1) * n]}, f)
    with open(py / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(D.CIFAR10_CLASSES)}, f)
    return images, labels


def test_python_layout_passes_check_data(tmp_path):
    _fake_py(tmp_path)
    D.check_data(DataConfig(root=str(tmp_path)))  # existence only
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DataError, match="batches.meta"):
        D.check_data(DataConfig(root=str(tmp_path)))


def test_python_layout_reads_through_torchvision(tmp_path):
    from torchvision.datasets import CIFAR10

    images, labels = _fake_py(tmp_path)
    try:
        CIFAR10(str(tmp_path), train=True)
    except RuntimeError:
        # torchvision verifies the official md5 sums, so a hand-made copy cannot be read; we do not bypass
        # the reader. The corrupt-file path is tested below and the HWC->CHW conversion in the next test.
        pytest.skip("torchvision only reads the official cifar-10-batches-py (md5-checked); none available offline")
    x, y = D.load_cifar10(tmp_path, train=True)
    assert x.shape == (20, 3, 32, 32) and torch.equal(x.flatten(1), torch.from_numpy(images[:20]))
    assert y.tolist() == labels[:20]


def test_python_layout_rejected_by_torchvision_is_a_data_error(tmp_path):
    _fake_py(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        D.load_cifar10(tmp_path, train=True)


def test_torchvision_hwc_arrays_become_chw_tensors():
    hwc = np.arange(2 * 32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(2, 32, 32, 3)
    x, y = D._tv_to_tensors(hwc, [3, 7])
    assert x.shape == (2, 3, 32, 32) and x.is_contiguous() and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(hwc).permute(0, 3, 1, 2)) and y.tolist() == [3, 7]


# ---------------------------------------------------------------------------------------------- splitting


def _assert_proportional(sub_counts: torch.Tensor, whole_counts: torch.Tensor, fraction: float) -> None:
    expected = whole_counts.double() * fraction
    assert ((sub_counts.double() - expected).abs() <= 1.0).all(), (sub_counts.tolist(), expected.tolist())


@pytest.mark.parametrize("val_fraction", [0.1, 0.137])
def test_val_split_is_stratified_disjoint_and_complete(train, val_fraction):
    y = train[1][:10_000]  # data_batch_1 has unequal class counts: a real proportionality test
    tr, va = D.split_indices(y, val_fraction, None, seed=0)
    assert tr.dtype == va.dtype == torch.int64
    assert len(va) == round(val_fraction * 10_000) and len(tr) + len(va) == 10_000
    assert torch.unique(torch.cat([tr, va])).numel() == 10_000  # disjoint, and nothing lost
    whole = torch.bincount(y, minlength=10)
    _assert_proportional(torch.bincount(y[va], minlength=10), whole, val_fraction)
    _assert_proportional(torch.bincount(y[tr], minlength=10), whole, 1 - val_fraction)


def test_split_is_deterministic_per_seed_and_differs_across_seeds(train):
    y = train[1]
    rng_before = torch.get_rng_state()
    a = D.split_indices(y, 0.1, None, seed=1)
    b = D.split_indices(y, 0.1, None, seed=1)
    c = D.split_indices(y, 0.1, None, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(torch.get_rng_state(), rng_before)  # private generator: the global RNG is untouched


@pytest.mark.parametrize("subset", [100, 777, 50_000])
def test_subset_size_and_stratification(train, subset):
    y = train[1]
    tr, va = D.split_indices(y, 0.2, subset, seed=3)
    both = torch.cat([tr, va])
    assert both.numel() == subset and torch.unique(both).numel() == subset
    assert len(va) == round(0.2 * subset)
    counts = torch.bincount(y[both], minlength=10)
    _assert_proportional(counts, torch.bincount(y, minlength=10), subset / 50_000)
    _assert_proportional(torch.bincount(y[va], minlength=10), counts, 0.2)


def test_split_errors(train):
    y = train[1]
    with pytest.raises(DataError, match="50000"):
        D.split_indices(y, 0.1, 50_001, seed=0)
    with pytest.raises(DataError, match="no validation images"):
        D.split_indices(y, 0.1, 64, seed=0)  # 6 val images cannot cover 10 classes
    with pytest.raises(DataError, match="no training images"):
        D.split_indices(y[:40], 0.99, None, seed=0)


def test_make_split(data_root, train):
    cfg = DataConfig(root=str(data_root), val_fraction=0.1, subset=2000, split_seed=5)
    split = D.make_split(cfg)
    assert split.train_x.shape == (1800, 3, 32, 32) and split.val_x.shape == (200, 3, 32, 32)
    assert split.train_x.dtype == torch.uint8 and split.train_y.dtype == torch.int64
    tr, va = D.split_indices(train[1], 0.1, 2000, 5)
    assert torch.equal(split.val_x, train[0][va]) and torch.equal(split.train_y, train[1][tr])
    assert split.val_x.data_ptr() != train[0].data_ptr()  # a copy: the cached tensors stay untouched


@pytest.mark.parametrize("val_fraction,subset,seed", [(0.2, 600, 0), (0.1, None, 3)])
def test_make_split_from_memory_map_equals_full_read(data_root, train, val_fraction, subset, seed):
    """The binary layout is split by reading only label bytes and the chosen rows of the memory-mapped files:
    exactly the tensors (values, order, dtype, contiguity) of indexing the full load."""
    cfg = DataConfig(root=str(data_root), val_fraction=val_fraction, subset=subset, split_seed=seed)
    split = D.make_split(cfg)
    tr, va = D.split_indices(train[1], val_fraction, subset, seed)
    expected = (train[0][tr], train[1][tr], train[0][va], train[1][va])
    for got, want in zip((split.train_x, split.train_y, split.val_x, split.val_y), expected):
        assert got.dtype == want.dtype and got.is_contiguous() and torch.equal(got, want)
    assert os.environ.get("TERNSEARCH_DATA")  # conftest contract: tests take the data folder from the env
