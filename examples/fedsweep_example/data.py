"""A synthetic regression task: y = sin(a·x) + b·x + noise, the dataset protocol's shape."""

from __future__ import annotations

import torch

from fedsweep.task import DataBundle, Dataset
from fedsweep.core.errors import ConfigError


def regression(*, n: int = 2000, dim: int = 8, noise: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """``n`` inputs x ~ N(0, I_dim) with targets y = sin(x·a) + x·b + noise·ε, one output each.

    fedsweep passes ``seed``; the rest are config keys. ``num_classes`` is the number of
    outputs (1) and ``input_shape`` is ``(dim,)``: the model factory receives both.
    """
    if not (isinstance(n, int) and n >= 50):
        raise ConfigError(f"data.n must be an integer >= 50, got data.n={n!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got data.test_fraction={test_fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen) / dim**0.5
    x = torch.randn(n, dim, generator=gen)
    y = torch.sin(x @ a) + x @ b + noise * torch.randn(n, generator=gen)
    cut = int(n * (1 - test_fraction))
    train, test = Dataset(x[:cut], y[:cut, None]), Dataset(x[cut:], y[cut:, None])
    return DataBundle(name="regression", train=train, test=test, input_shape=(dim,), num_classes=1)
