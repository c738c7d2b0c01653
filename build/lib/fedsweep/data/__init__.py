"""Datasets as in-memory tensors and the VRCS server/client partition."""

from fedsweep.data.datasets import DATASETS, DataBundle, Dataset, load_dataset
from fedsweep.data.partition import SCHEMES, Partition, make_partition

__all__ = ["DATASETS", "DataBundle", "Dataset", "load_dataset", "SCHEMES", "Partition", "make_partition"]
