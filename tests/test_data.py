"""Dataset loading, all offline: digits from scikit-learn, CIFAR-10 and Fashion-MNIST
from tiny files written here in their original formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from fedsweep.task import DATASETS, DataBundle, Dataset, load_dataset
from fedsweep.task import datasets as datasets_mod
from fedsweep.core.errors import ConfigError

# ---------------------------------------------------------------- Dataset


def test_dataset_subset_and_len() -> None:
    ds = Dataset(x=torch.arange(10.0).view(10, 1, 1, 1), y=torch.arange(10) % 3)
    assert len(ds) == 10
    for idx in ([7, 2], np.array([7, 2]), torch.tensor([7, 2])):
        sub = ds.subset(idx)
        assert sub.x.view(-1).tolist() == [7.0, 2.0]
        assert sub.y.tolist() == [1, 2]
    assert len(ds.subset(ds.y == 0)) == 4
    assert len(ds.subset(slice(0, 3))) == 3
    assert len(ds.subset([])) == 0


def test_dataset_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        Dataset(x=torch.zeros(3, 1, 1, 1), y=torch.zeros(2, dtype=torch.int64))


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", root="unused")


def test_digits_shapes_and_types(digits: DataBundle) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=1)
    for part in (digits.train, digits.test):
        assert part.x.dtype == torch.float32 and part.x.shape[1:] == (1, 8, 8)
        assert part.y.dtype == torch.int64 and part.y.shape == (len(part),)
        assert set(part.y.tolist()) == set(range(10))
    # standardised with the training split's statistics
    assert digits.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert digits.train.x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_digits_split_is_stratified(digits: DataBundle) -> None:
    all_counts = torch.bincount(torch.cat([digits.train.y, digits.test.y]), minlength=10)
    test_counts = torch.bincount(digits.test.y, minlength=10)
    expected = all_counts.double() * len(digits.test) / all_counts.sum()
    assert (test_counts - expected).abs().max().item() <= 1.0


def test_digits_are_scikit_learns_digits() -> None:
    """Read from the file in scikit-learn's wheel: the same images and labels as its loader."""
    from sklearn.datasets import load_digits as sk_load_digits

    from fedsweep.task.datasets import _digits_rows

    raw, sk = _digits_rows(), sk_load_digits()
    np.testing.assert_array_equal(raw[:, :-1], sk.data)
    np.testing.assert_array_equal(raw[:, -1], sk.target)


def test_digits_split_determinism_and_fraction() -> None:
    a = load_dataset("digits", root="unused", seed=3)
    b = load_dataset("digits", root="unused", seed=3)
    c = load_dataset("digits", root="unused", seed=4)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.y, c.test.y)
    half = load_dataset("digits", root="unused", test_fraction=0.5)
    assert len(half.test) in (898, 899)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction(bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"test_fraction={bad}"):
        load_dataset("digits", root="unused", test_fraction=bad)


def test_unknown_dataset_names_it_and_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet", root="unused")
    msg = str(info.value)
    assert "'imagenet'" in msg and "\n" not in msg
    assert all(name in msg for name in DATASETS)


# ---------------------------------------------------------------- random images (speed tests)


def test_random_images_shapes_seeding_and_config() -> None:
    from fedsweep.experiment.build import load_data
    from fedsweep.experiment.config import compose, to_container, validate
    from fedsweep.task import random_images

    a = random_images(num_examples=30, test_examples=7, shape=(3, 12, 10), num_classes=4, seed=1)
    assert a.input_shape == (3, 12, 10) and a.num_classes == 4
    assert a.train.x.shape == (30, 3, 12, 10) and a.train.x.dtype == torch.float32 and len(a.test) == 7
    assert a.train.y.dtype == torch.int64 and set(a.train.y.tolist()) <= {0, 1, 2, 3}
    b = random_images(num_examples=30, test_examples=7, shape=(3, 12, 10), num_classes=4, seed=1)
    c = random_images(num_examples=30, test_examples=7, shape=(3, 12, 10), num_classes=4, seed=2)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    with pytest.raises(ConfigError, match=r"data.shape must be \(C, H, W\)"):
        random_images(shape=(32, 32))
    cfg = to_container(compose(["data=random_images", "data.num_examples=40", "data.test_examples=5", "seed=3"]))
    validate(cfg)
    bundle = load_data(cfg)
    assert bundle.input_shape == (3, 32, 32) and len(bundle.train) == 40 and len(bundle.test) == 5


# ---------------------------------------------------------------- CIFAR-10 (offline)

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def _write_tiny_cifar(root: Path, per_batch: int = 4) -> tuple[np.ndarray, list[int]]:
    """Write CIFAR-10's python batches (wrong md5s, tiny) under root; return all raw data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    datas, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "data": data, "labels": lab, "filenames": []}, fh)
        datas.append(data)
        labels.extend(lab)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh)
    return np.concatenate(datas), labels


def test_cifar10_reads_extracted_folder_offline(tmp_path: Path, monkeypatch) -> None:
    data, labels = _write_tiny_cifar(tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("CIFAR10 must not be downloaded when the folder exists")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    bundle = load_dataset("cifar10", root=tmp_path)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    assert len(bundle.train) == 20 and len(bundle.test) == 4
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    assert bundle.train.y.tolist() + bundle.test.y.tolist() == labels
    # rows are R plane, G plane, B plane of 32x32; normalised per channel
    raw = torch.from_numpy(data).float().view(-1, 3, 32, 32) / 255.0
    expected = (raw - CIFAR_MEAN) / CIFAR_STD
    assert torch.allclose(bundle.train.x, expected[:20], atol=1e-6)
    assert torch.allclose(bundle.test.x, expected[20:], atol=1e-6)


def test_cifar10_downloads_when_folder_missing(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_cifar10(root, train=True, download=False, **kwargs):  # stands in for the network
        calls.append((root, train, download))
        _write_tiny_cifar(Path(root), per_batch=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    bundle = load_dataset("cifar10", root=tmp_path)
    assert calls == [(str(tmp_path), True, True)]
    assert len(bundle.train) == 10 and len(bundle.test) == 2


# ---------------------------------------------------------------- Fashion-MNIST (offline)


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_debian_dir(path: Path) -> dict[str, np.ndarray]:
    path.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(12, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(12) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(5, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7, 6, 5]),
    }
    for name, arr in arrays.items():
        _write_idx_gz(path / f"{name}.gz", arr)
    return arrays


def test_fashion_mnist_from_debian_files_offline(tmp_path: Path, monkeypatch) -> None:
    arrays = _fake_debian_dir(tmp_path / "debian")
    monkeypatch.setattr(datasets_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    root = tmp_path / "root"
    bundle = load_dataset("fashion_mnist", root=root)
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(arrays)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert len(bundle.train) == 12 and len(bundle.test) == 5
    assert bundle.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert bundle.test.y.tolist() == [9, 8, 7, 6, 5]
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255.0 - 0.2860) / 0.3530
    assert bundle.test.x.dtype == torch.float32
    assert torch.allclose(bundle.test.x, expected.unsqueeze(1), atol=1e-6)
    # a second load reuses the unzipped files
    again = datasets_mod.load_fashion_mnist(root, debian_dir=tmp_path / "debian")
    assert torch.equal(again.train.x, bundle.train.x)


def test_fashion_mnist_downloads_without_debian_files(tmp_path: Path, monkeypatch) -> None:
    flags = []

    class FakeFashionMNIST:  # stands in for the network
        classes = list(range(10))

        def __init__(self, root, train=True, download=False):
            flags.append(download)
            self.data = torch.zeros(3 if train else 2, 28, 28, dtype=torch.uint8)
            self.targets = torch.tensor([1, 2, 3] if train else [4, 5])

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    bundle = datasets_mod.load_fashion_mnist(tmp_path, debian_dir=tmp_path / "absent")
    assert flags == [True, True]
    assert len(bundle.train) == 3 and bundle.test.y.tolist() == [4, 5]


@pytest.mark.skipif(
    not (datasets_mod.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_real_debian_files(tmp_path: Path) -> None:
    bundle = load_dataset("fashion_mnist", root=tmp_path)
    assert len(bundle.train) == 60000 and len(bundle.test) == 10000
    assert abs(bundle.train.x.mean().item()) < 0.01 and abs(bundle.train.x.std().item() - 1) < 0.01
