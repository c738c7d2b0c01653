"""A model plug-in is an nn.Module factory (here a class) given the input shape and the outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class TwoLayer(nn.Module):
    """x → tanh(W1 x) → W2 ·, with ``width`` hidden units."""

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
