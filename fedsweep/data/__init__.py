"""Datasets as in-memory tensors and the VRCS server/client partition."""

from fedsweep.data.datasets import (
    DATASETS,
    DataBundle,
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from fedsweep.data.partition import SCHEMES, Partition, make_partition

__all__ = [
    "DATASETS", "DataBundle", "Dataset", "load_dataset", "load_digits", "load_fashion_mnist", "load_mnist",
    "load_cifar10", "SCHEMES", "Partition", "make_partition",
]  # fmt: skip
