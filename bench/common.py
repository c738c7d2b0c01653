"""What the benchmarks share: the ResNet-18 parameter set and interleaved median timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn


def resnet18_cifar() -> nn.Module:
    """ResNet-18 for 32×32 inputs: 3×3 stride-1 conv1, no maxpool (62 tensors, 11.2 M values)."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def medians_ms(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each function in ms, the functions taking turns each round."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
