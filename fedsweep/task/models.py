"""The built-in models: factories named by ``model._target_`` (a user's own plugs in the same way).

A model factory is called as ``factory(input_shape=(C, H, W), num_classes=K, **config keys)``
and returns an ``nn.Module``; fedsweep seeds torch around the call, so the initialisation
is deterministic for the run's seed (:func:`seeded`).

=========================  =======================================================
``_target_``               architecture
=========================  =======================================================
``fedsweep.task.models.mlp``    flatten -> Linear(hidden) -> act -> Linear(hidden) ->
                           act -> Linear(num_classes).
``fedsweep.task.models.cnn``    conv3x3(C->32) -> norm -> act -> maxpool 2 ->
                           conv3x3(32->64) -> norm -> act -> AdaptiveAvgPool(4x4)
                           -> Linear(hidden) -> act -> Linear(num_classes). Works
                           for 8x8, 28x28 and 32x32 inputs.
``fedsweep.task.models.cifar_cnn``  pfl-research's CIFAR-10 benchmark CNN: conv3x3(C->32) ->
                           ReLU -> maxpool 2 -> conv3x3(32->64) -> ReLU -> maxpool 2 ->
                           Linear(hidden=128) -> ReLU -> Linear(num_classes); no padding,
                           no normalisation (Linear(2304, 128) on 32x32 inputs).
``fedsweep.task.models.lenet``  NIID-Bench's CNN for (Fashion-)MNIST: conv5(6) → pool →
                           conv5(16) → pool → Linear(120) → Linear(84) → classes, ReLU.
``fedsweep.task.models.resnet18``  torchvision ``resnet18(num_classes)`` with conv1 a 3x3
                           stride-1 padding-1 conv on ``input_shape[0]`` channels and
                           no max-pool (the usual CIFAR variant, He et al. 2016,
                           arXiv:1512.03385).
=========================  =======================================================

``norm``: ``"group"`` (GroupNorm with ``gcd(32, channels)`` groups, so it always divides
the channels) or ``"none"`` (identity). ``"batch"`` is refused: BatchNorm's running
statistics are never federated and its batch statistics mix examples, so h would not be a
mean over examples.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError

NormFactory = Callable[[int], nn.Module]  # channels -> normalisation layer
Norm = str  # "group" | "none": checked by _norm_layer, which says why "batch" is refused


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                                            "softplus": nn.Softplus}  # fmt: skip
"""``activation`` of the built-in models. The smooth ones suit the sliding methods: their server
solves to a gradient tolerance, which a ReLU network's kinks can make unreachable."""


def mlp(*, input_shape: Sequence[int], num_classes: int, hidden: int = 64, activation: str = "relu") -> nn.Module:
    shape, num_classes = _check_sizes(input_shape, num_classes, hidden)
    act = _activation(activation)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(shape), hidden),
        act(),
        nn.Linear(hidden, hidden),
        act(),
        nn.Linear(hidden, num_classes),
    )


def cnn(
    *, input_shape: Sequence[int], num_classes: int, hidden: int = 64, norm: Norm = "group", activation: str = "relu"
) -> nn.Module:
    shape, num_classes = _check_sizes(input_shape, num_classes, hidden, image=True)
    layer, act = _norm_layer(norm), _activation(activation)
    return nn.Sequential(
        nn.Conv2d(shape[0], 32, kernel_size=3, padding=1),
        layer(32),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        layer(64),
        act(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, hidden),
        act(),
        nn.Linear(hidden, num_classes),
    )


def cifar_cnn(*, input_shape: Sequence[int], num_classes: int, hidden: int = 128) -> nn.Module:
    """The CNN of pfl-research's simulator benchmark on CIFAR-10 (Granlund et al., "pfl-research:
    simulation framework for accelerating research in Private Federated Learning", 2024,
    arXiv:2404.06430): conv3(C→32) → ReLU → maxpool 2 → conv3(32→64) → ReLU → maxpool 2 →
    Linear(hidden) → ReLU → Linear(num_classes), unpadded; 2304 features before the first
    Linear on 32×32 inputs (0.32 M parameters with hidden = 128)."""
    shape, num_classes = _check_sizes(input_shape, num_classes, hidden, image=True)
    return _two_conv_net("cifar_cnn", shape, num_classes, channels=(32, 64), kernel=3, hidden=(hidden,))


def lenet(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """NIID-Bench's CNN for (Fashion-)MNIST (``SimpleCNNMNIST``, Li et al. 2022, arXiv 2102.02079):
    conv5(C→6) → ReLU → maxpool 2 → conv5(6→16) → ReLU → maxpool 2 → Linear(120) → ReLU →
    Linear(84) → ReLU → Linear(num_classes); 44k parameters on 28×28 inputs."""
    shape, num_classes = _check_sizes(input_shape, num_classes, 1, image=True)
    return _two_conv_net("lenet", shape, num_classes, channels=(6, 16), kernel=5, hidden=(120, 84))


def _two_conv_net(
    name: str, shape: Sequence[int], num_classes: int, *, channels: tuple[int, int], kernel: int, hidden: Sequence[int]
) -> nn.Sequential:
    """conv(kernel) → ReLU → maxpool 2, twice, unpadded; then Linear → ReLU through ``hidden``
    and a Linear to the classes. Each side must leave at least one pixel: 3·kernel + 1."""
    height, width = (((side - kernel + 1) // 2 - kernel + 1) // 2 for side in shape[1:])
    if min(height, width) < 1:
        side = 3 * kernel + 1
        raise ConfigError(f"model={name} needs inputs of at least {side}x{side}, got input_shape={tuple(shape)}")
    (c1, c2), features = channels, channels[1] * height * width
    layers: list[nn.Module] = [
        nn.Conv2d(shape[0], c1, kernel), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    ]  # fmt: skip
    for width_out in hidden:
        layers += [nn.Linear(features, width_out), nn.ReLU()]
        features = width_out
    return nn.Sequential(*layers, nn.Linear(features, num_classes))


def resnet18(*, input_shape: Sequence[int], num_classes: int, norm: Norm = "group") -> nn.Module:
    from torchvision.models import resnet18 as torchvision_resnet18

    shape, num_classes = _check_sizes(input_shape, num_classes, 1, image=True)
    model = torchvision_resnet18(num_classes=num_classes, norm_layer=_norm_layer(norm))
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    model.maxpool = nn.Identity()
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "cifar_cnn": cifar_cnn, "lenet": lenet,
                                               "resnet18": resnet18}  # fmt: skip


def convolves(model: nn.Module) -> bool:
    """True if a module of the model is a convolution."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def seeded(factory: Callable[..., nn.Module], seed: int | None, **kwargs: Any) -> nn.Module:
    """``factory(**kwargs)`` with torch seeded by ``seed``; the global torch RNG is left untouched (forked)."""
    if seed is None:
        return factory(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**kwargs)


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Built-in model ``name`` (``mlp``, ``cnn``, ``cifar_cnn``, ``lenet``, ``resnet18``), seeded: a shortcut for tests and notebooks."""
    if name not in MODELS:
        raise ConfigError(f"unknown model name={shown(name)}; known: {', '.join(MODELS)}")
    return seeded(MODELS[name], seed, **kwargs)


def _check_sizes(input_shape: object, num_classes: object, hidden: object, *, image: bool = False):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if not shape or (image and len(shape) != 3) or not all(_is_int(s) and s > 0 for s in shape):
        want = "(C, H, W)" if image else "a shape"
        raise ConfigError(f"input_shape must be {want} of positive ints, got input_shape={shown(input_shape)}")
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got num_classes={shown(num_classes)}")
    if not _is_int(hidden) or hidden < 1:
        raise ConfigError(f"model.hidden must be an integer >= 1, got model.hidden={shown(hidden)}")
    return tuple(int(s) for s in shape), int(num_classes)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown model.activation={shown(name)}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _norm_layer(norm: str) -> NormFactory:
    if norm == "batch":
        raise ConfigError(
            "model.norm='batch' is not supported: BatchNorm's running statistics are never federated and its "
            "batch statistics mix examples, so h would not be a mean over examples; use group or none"
        )
    if norm not in ("group", "none"):
        raise ConfigError(f"unknown model.norm={shown(norm)}; known: group, none")
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    return lambda channels: nn.Identity()
