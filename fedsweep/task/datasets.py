"""Datasets as in-memory tensors: one loader per name, one `DataBundle` out.

Every loader returns float32 images ``(N, C, H, W)`` (standardised, unless ``fashion_mnist``'s
``normalize`` is false) and int64 labels ``(N,)``; nothing downstream needs a ``DataLoader``.

=================  ==========================================================
name               source and split
=================  ==========================================================
``digits``         scikit-learn ``load_digits()`` (inside the wheel, offline),
                   1797 images ``(1, 8, 8)``; scaled to [0, 1], standardised
                   with the training split's mean/std; stratified, seeded
                   train/test split of ``test_fraction``.
``fashion_mnist``  torchvision ``FashionMNIST``, official 60k/10k split. The
                   Debian package ``dataset-fashion-mnist`` (IDX ``.gz`` files
                   in ``/usr/share/datasets/fashion-mnist/``) is used when
                   present, otherwise torchvision downloads.
``mnist``          torchvision ``MNIST(download=True)``, official split.
``cifar10``        CIFAR-10 python batches, official 50k/10k split,
                   per-channel normalisation.
``random_images``  standard normal pixels and uniform labels from a seeded
                   generator, any shape and size: for speed tests (speed does
                   not depend on the values), e.g. CIFAR-10's shape.
=================  ==========================================================

``seed`` and ``test_fraction`` only affect ``digits`` (and ``seed`` ``random_images``) (the others have an official split).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "mnist", "cifar10")  # by name in load_dataset

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the original IDX files."""

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"

# Conventional normalisation constants (pixel values in [0, 1]).
_MNIST_MEAN_STD = (0.1307, 0.3081)
_FASHION_MNIST_MEAN_STD = (0.2860, 0.3530)
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels held in memory, and optionally the client each example came from.

    ``x`` is float32 ``(N, C, H, W)``, ``y`` is int64 ``(N,)``. ``client_ids`` is for data with
    a natural federation (LEAF's FEMNIST writers, Shakespeare's speakers): one id per example,
    integers or strings (strings are stored as int64 codes, their rank among the distinct ids),
    kept with their examples by ``subset``; ``fedsweep.task.partitions.natural`` makes one
    client per distinct id. A data plug-in sets it on its training set,
    ``DataBundle(train=Dataset(x, y, client_ids=writers), ...)``.
    """

    x: torch.Tensor
    y: torch.Tensor
    client_ids: torch.Tensor | None = None  # (N,) int64 (arrays and lists are converted); None: no natural clients

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x and y disagree on length: {self.x.shape[0]} != {self.y.shape[0]}")
        if self.client_ids is None:
            return
        ids = self.client_ids
        if not isinstance(ids, torch.Tensor):
            ids = np.asarray(ids)
            ids = torch.from_numpy(np.unique(ids, return_inverse=True)[1] if ids.dtype.kind in "USO" else ids)
        if ids.shape != self.y.shape[:1] or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"client_ids must be one integer or string id per example, got {tuple(ids.shape)} {ids.dtype}")
        object.__setattr__(self, "client_ids", ids.long())

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor | np.ndarray | Sequence[int] | slice) -> Dataset:
        """The examples at ``idx`` (an index array, a boolean mask or a slice), as a new Dataset."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            if idx.dtype != torch.bool:
                idx = idx.long()
        ids = None if self.client_ids is None else self.client_ids[idx]
        return Dataset(x=self.x[idx], y=self.y[idx], client_ids=ids)

    def split(self, parts: Sequence[np.ndarray]) -> tuple[Dataset, ...]:
        """The examples at each index array of ``parts``, gathered in one copy: the parts are
        consecutive views of it (so the clients' data, ``ClientData``, takes it as it is)."""
        sizes = [len(part) for part in parts]
        whole = self.subset(np.concatenate([np.asarray(part, dtype=np.int64) for part in parts]) if parts else [])
        ends = np.cumsum([0, *sizes])
        return tuple(whole.subset(slice(int(lo), int(hi))) for lo, hi in zip(ends[:-1], ends[1:]))


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A named dataset with its train and test parts."""

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int

    @property
    def client_ids(self) -> torch.Tensor | None:
        """Each training example's client id (``train.client_ids``), None without natural clients."""
        return self.train.client_ids


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> DataBundle:
    """Built-in dataset ``name`` (a shortcut for tests and notebooks; configs name a loader by
    ``data._target_``); files are cached/downloaded under ``root``.

    Raises ConfigError for an unknown ``name`` or ``test_fraction`` outside (0, 1).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset name={shown(name)}; known: {', '.join(DATASETS)}")
    root = Path(root)
    if name == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if name == "fashion_mnist":
        return load_fashion_mnist(root)
    if name == "mnist":
        return load_mnist(root)
    return load_cifar10(root)


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> DataBundle:
    """scikit-learn's 8x8 digits with a stratified, seeded split.

    The images are read from the file inside scikit-learn's wheel as its own loader does
    (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label per row), without
    importing scikit-learn, whose import alone measured 0.7 s of a run's start-up.
    """
    if not (isinstance(test_fraction, (int, float)) and 0.0 < test_fraction < 1.0):
        raise ConfigError(f"data.test_fraction must be in (0, 1), got data.test_fraction={test_fraction}")
    raw = _digits_rows()
    images = raw[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = raw[:, -1].astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    x_tr, x_te, y_tr, y_te = images[train], images[test], labels[train], labels[test]
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr = torch.from_numpy((x_tr - mean) / std).unsqueeze(1)
    x_te = torch.from_numpy((x_te - mean) / std).unsqueeze(1)
    return DataBundle(
        name="digits",
        train=Dataset(x=x_tr.float(), y=torch.from_numpy(y_tr)),
        test=Dataset(x=x_te.float(), y=torch.from_numpy(y_te)),
        input_shape=(1, 8, 8),
        num_classes=10,
    )


def _digits_rows() -> np.ndarray:
    """The digits table (1797 × 65) from scikit-learn's installed data file, else its loader."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits as sk_load_digits  # a layout this code does not know

    raw = sk_load_digits()
    return np.column_stack([raw.data, raw.target])


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices; each class keeps its share in the test part.

    ``round(test_fraction · N)`` test examples, apportioned to classes by largest remainder
    and drawn at random within each class, from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = round(test_fraction * len(labels))
    exact = n_test * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: n_test - quota.sum()]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def load_fashion_mnist(
    root: str | os.PathLike, *, debian_dir: str | os.PathLike | None = None, normalize: bool = True
) -> DataBundle:
    """Fashion-MNIST, from Debian's files if present, else downloaded by torchvision.

    ``debian_dir`` defaults to ``DEBIAN_FASHION_MNIST_DIR`` (read at call time). When it
    holds the four IDX ``.gz`` files they are unzipped into ``root/FashionMNIST/raw/``
    and read with ``download=False``. Pixels are in [0, 1], standardised unless ``normalize``
    is false (NIID-Bench reads them with ``ToTensor()`` alone).
    """
    from torchvision.datasets import FashionMNIST

    debian = Path(debian_dir) if debian_dir is not None else DEBIAN_FASHION_MNIST_DIR
    raw_dir = Path(root) / "FashionMNIST" / "raw"
    have_debian = all((debian / f"{name}.gz").is_file() for name in IDX_FILES)
    if have_debian:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in IDX_FILES:
            if not (raw_dir / name).is_file():
                _gunzip(debian / f"{name}.gz", raw_dir / name)
    with _download("Fashion-MNIST", root):
        parts = [FashionMNIST(str(root), train=t, download=not have_debian) for t in (True, False)]
    return _idx_bundle("fashion_mnist", parts, _FASHION_MNIST_MEAN_STD if normalize else (0.0, 1.0))


def load_mnist(root: str | os.PathLike) -> DataBundle:
    """MNIST through torchvision (downloads unless already under ``root/MNIST/raw``)."""
    from torchvision.datasets import MNIST

    with _download("MNIST", root):
        parts = [MNIST(str(root), train=t, download=True) for t in (True, False)]
    return _idx_bundle("mnist", parts, _MNIST_MEAN_STD)


def load_cifar10(root: str | os.PathLike) -> DataBundle:
    """CIFAR-10 from ``root/cifar-10-batches-py``; torchvision downloads it if absent.

    torchvision's ``CIFAR10`` verifies the md5 of every batch file even with
    ``download=False``, so it is used only to download and extract; the batches
    (CIFAR's python pickles: dicts with ``data`` (N, 3072) uint8 and ``labels``)
    are read here. An already extracted folder is therefore used as is.
    """
    folder = Path(root) / CIFAR10_FOLDER
    needed = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    if not all((folder / f).is_file() for f in needed):
        from torchvision.datasets import CIFAR10

        with _download("CIFAR-10", root):
            CIFAR10(str(root), train=True, download=True)
    mean = torch.tensor(_CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR10_STD).view(1, 3, 1, 1)

    def read(files: Sequence[str]) -> Dataset:
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry["labels"])
        x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
        return Dataset(x=(x - mean) / std, y=torch.tensor(ys, dtype=torch.int64))

    return DataBundle(
        name="cifar10",
        train=read(CIFAR10_TRAIN_FILES),
        test=read([CIFAR10_TEST_FILE]),
        input_shape=(3, 32, 32),
        num_classes=10,
    )


def random_images(
    *,
    num_examples: int = 50_000,
    test_examples: int = 2_000,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> DataBundle:
    """Random images for speed tests: N(0, 1) float32 pixels of ``shape`` and labels uniform over
    ``num_classes``, from ``torch.Generator().manual_seed(seed)`` (the same data for the same
    arguments). The defaults have CIFAR-10's shape and training-set size, as in pfl-research's
    simulator benchmark; the values carry no signal."""
    shape = tuple(shape)
    if not (len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ConfigError(f"data.shape must be (C, H, W) of positive ints, got data.shape={list(shape)}")
    for key, value, low in (("num_examples", num_examples, 1), ("test_examples", test_examples, 1),
                            ("num_classes", num_classes, 2)):  # fmt: skip
        if not (isinstance(value, int) and value >= low):
            raise ConfigError(f"data.{key} must be an integer >= {low}, got data.{key}={value!r}")
    gen = torch.Generator().manual_seed(int(seed))

    def draw(n: int) -> Dataset:
        x = torch.randn((n, *shape), generator=gen)
        return Dataset(x=x, y=torch.randint(num_classes, (n,), generator=gen))

    train = draw(num_examples)
    return DataBundle("random_images", train=train, test=draw(test_examples), input_shape=shape, num_classes=num_classes)


def _idx_bundle(name: str, parts: Sequence, mean_std: tuple[float, float]) -> DataBundle:
    """Turn torchvision MNIST-style (train, test) datasets into a normalised DataBundle."""
    mean, std = mean_std

    def convert(ds) -> Dataset:
        x = ds.data.float().div_(255.0).sub_(mean).div_(std).unsqueeze(1)
        return Dataset(x=x, y=ds.targets.long())

    train, test = (convert(p) for p in parts)
    return DataBundle(
        name=name,
        train=train,
        test=test,
        input_shape=tuple(train.x.shape[1:]),
        num_classes=len(parts[0].classes),
    )


@contextmanager
def _download(name: str, root: str | os.PathLike) -> Iterator[None]:
    """A download that fails (no network, a mirror down) as one line naming the data set and where
    it would be kept, with the offline alternative."""
    try:
        yield
    except (RuntimeError, OSError) as err:
        cause = " ".join(str(err).split())[:160]
        raise ConfigError(
            f"data: {name} is not under {root} and could not be downloaded ({cause}); without a network, "
            "data=digits or data=fashion_mnist (Debian's dataset-fashion-mnist) run offline"
        ) from None


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst`` atomically (no half-written file on interruption)."""
    tmp = dst.with_suffix(dst.suffix + ".part")
    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.replace(tmp, dst)
