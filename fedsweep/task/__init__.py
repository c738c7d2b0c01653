"""One model on one dataset, nothing federated: datasets as in-memory tensors, partitions into
client groups, models, losses, and the mean gradients, HVPs and evaluation of ``compute``."""

from fedsweep.task.datasets import (
    DATASETS,
    DataBundle,
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    random_images,
)
from fedsweep.task.partitions import Partition
from fedsweep.task.vrcs_partitions import SCHEMES, make_partition

__all__ = [
    "DATASETS", "DataBundle", "Dataset", "load_dataset", "load_digits", "load_fashion_mnist", "load_mnist",
    "load_cifar10", "random_images", "SCHEMES", "Partition", "make_partition",
]  # fmt: skip
