"""Models by name: a small MLP, a small CNN and a CIFAR-style ResNet-18.

=============  ===============================================================
name           architecture
=============  ===============================================================
``mlp``        flatten -> Linear(hidden) -> ReLU -> Linear(hidden) -> ReLU ->
               Linear(num_classes). No normalisation layers (``norm`` unused).
``cnn``        conv3x3(C->32) -> norm -> ReLU -> maxpool 2 -> conv3x3(32->64) ->
               norm -> ReLU -> AdaptiveAvgPool(4x4) -> Linear(hidden) -> ReLU ->
               Linear(num_classes). Works for 8x8, 28x28 and 32x32 inputs.
``resnet18``   torchvision ``resnet18(num_classes)`` with conv1 a 3x3 stride-1
               padding-1 conv on ``input_shape[0]`` channels and no max-pool
               (the usual CIFAR variant, He et al. 2016, arXiv:1512.03385).
=============  ===============================================================

``norm``: ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm with ``gcd(32, channels)``
groups, so it always divides the channels) or ``"none"`` (identity).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import nn

from fedsweep.errors import ConfigError

MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet18")
NORMS: tuple[str, ...] = ("batch", "group", "none")

NormFactory = Callable[[int], nn.Module]  # channels -> normalisation layer


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 64,
    norm: str = "batch",
    seed: int | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` = (C, H, W).

    With ``seed`` the initialisation is deterministic and the global torch RNG is left
    untouched (it is forked). Raises ConfigError for an unknown name/norm or bad sizes.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model name={name!r}; known: {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ConfigError(f"unknown norm={norm!r}; known: {', '.join(NORMS)}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
        raise ConfigError(f"input_shape must be (C, H, W) of positive ints, got input_shape={input_shape!r}")
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got num_classes={num_classes!r}")
    if not _is_int(hidden) or hidden < 1:
        raise ConfigError(f"hidden must be an integer >= 1, got hidden={hidden!r}")

    shape, num_classes, hidden = tuple(int(s) for s in shape), int(num_classes), int(hidden)
    build = {"mlp": _mlp, "cnn": _cnn, "resnet18": _resnet18}[name]
    if seed is None:
        return build(shape, num_classes, hidden, _norm_layer(norm))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(shape, num_classes, hidden, _norm_layer(norm))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _norm_layer(norm: str) -> NormFactory:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    return lambda channels: nn.Identity()


def _mlp(shape: tuple[int, ...], num_classes: int, hidden: int, norm: NormFactory) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _cnn(shape: tuple[int, ...], num_classes: int, hidden: int, norm: NormFactory) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(shape[0], 32, kernel_size=3, padding=1),
        norm(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        norm(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _resnet18(shape: tuple[int, ...], num_classes: int, hidden: int, norm: NormFactory) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes, norm_layer=norm)
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    model.maxpool = nn.Identity()
    return model
