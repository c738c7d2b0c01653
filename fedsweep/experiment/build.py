"""A run built from its config's components: data, partition, model and loss (:func:`prepare`),
then the runtime, the server with its solver, the oracle and the method (:func:`build`).

:func:`prepare` builds the first for a run. :func:`check_setup` builds them once before any work
starts (a forward pass and the loss on two examples included), so that a sweep stops in one
line on a model that does not fit its data, or a loss that does not fit the model, before Ray
starts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsweep.algorithms import Method, MethodState
from fedsweep.algorithms.common import check_federation
from fedsweep.core.device import resolve_device
from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError
from fedsweep.core.targets import use_plugins
from fedsweep.core.weights import Weights
from fedsweep.experiment import components
from fedsweep.federation.client_data import ClientData
from fedsweep.federation.oracle import FederatedOracle
from fedsweep.federation.runtime.base import Runtime
from fedsweep.federation.server import Server
from fedsweep.task import DataBundle, Dataset, Partition
from fedsweep.task.losses import Loss
from fedsweep.task.models import seeded


@dataclass(frozen=True)
class Setup:
    """Everything a run needs that does not change between rounds."""

    bundle: DataBundle  # its training part cut to two examples: the partition holds the rest
    partition: Partition
    model_fn: Callable[[], nn.Module]
    loss: Loss
    device: torch.device


def make_model(node: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int, seed: int | None,
               plugins: tuple[str, ...] = ()) -> nn.Module:  # fmt: skip
    """The model of config node ``node`` (``model._target_``), torch seeded by ``seed``. Picklable
    as a ``functools.partial``: a worker imports the target itself (``plugins``: the config's)."""
    use_plugins(plugins)
    return seeded(
        lambda **kw: components.build("model", node, **kw), seed, input_shape=input_shape, num_classes=num_classes
    )


def seed_of(cfg: Mapping[str, Any], source: str) -> int:
    """The seed of one source of randomness (``data``, ``init``, ``method``): ``seeds.<source>``,
    or ``seed`` when that is null."""
    own = cfg.get("seeds", {}).get(source)
    return int(cfg["seed"] if own is None else own)


def load_data(cfg: Mapping[str, Any]) -> DataBundle:
    bundle = components.build("data", cfg["data"], seed=seed_of(cfg, "data"))
    if not isinstance(bundle, DataBundle):
        raise ConfigError(f"data._target_={shown(cfg['data']['_target_'])} returned {type(bundle).__name__}, not a DataBundle")
    return bundle


def prepare(cfg: Mapping[str, Any], *, device: torch.device | None = None) -> Setup:
    """Load data, partition it and fix the model constructor (deterministic for the config's seeds),
    for ``device`` (default: the config's, checked on this machine)."""
    bundle = load_data(cfg)
    partition = components.build(
        "partition", cfg["partition"], bundle.train, num_classes=bundle.num_classes, seed=seed_of(cfg, "data")
    )
    if not isinstance(partition, Partition):
        raise ConfigError(f"partition._target_={shown(cfg['partition']['_target_'])} returned {type(partition).__name__}, not a Partition")
    model_fn = functools.partial(
        make_model, dict(cfg["model"]), input_shape=bundle.input_shape, num_classes=bundle.num_classes,
        seed=seed_of(cfg, "init"), plugins=tuple(cfg.get("plugins") or ()),
    )
    loss = components.build("loss", cfg["loss"])
    # the partition holds the clients' (and the server's) examples: the training set itself is let
    # go, but for two examples the checks run the model on (a second copy of it in the driver
    # while the clients' copy goes to Ray's object store: pfl-shaped data, 2.4 GB against 1.8 GB)
    sample = Dataset(bundle.train.x[:2].clone(), bundle.train.y[:2].clone())
    bundle = dataclasses.replace(bundle, train=sample)
    return Setup(bundle, partition, model_fn, loss, device or resolve_device(cfg["device"]))


def make_runtime(cfg: Mapping[str, Any], *, label: str) -> Runtime:
    """The run's runtime component (``runtime._target_``); a Ray pool starts its workers now, so
    they boot while the driver loads data (Ray must be running)."""
    return components.build("runtime", cfg["runtime"], device=cfg["device"], label=label)


def _on(data: Dataset, device: torch.device) -> Dataset:
    return Dataset(data.x.to(device), data.y.to(device))


@dataclass
class Run:
    """A built run: what the round loop touches."""

    method: Method
    state: MethodState
    oracle: FederatedOracle
    server: Server
    test_data: Dataset
    loss: Loss


def build(cfg: Mapping[str, Any], setup: Setup, runtime: Runtime) -> Run:
    """The clients attached to ``runtime``, the server with its solver, the method and its start."""
    method = components.build("method", cfg["method"])
    check_federation(method, tuple(setup.partition.clients), tuple(setup.partition.server))
    clients = ClientData.from_partition(setup.partition)
    model = setup.model_fn()
    check_model(model, cfg)
    runtime.attach(clients, setup.model_fn, loss=setup.loss)
    device = setup.device
    weights = setup.partition.group_weights()
    server_data = {group: _on(data, device) for group, data in setup.partition.server.items()}
    server = Server(
        model.to(device), server_data, group_weights=weights, solver=components.build("solver", cfg["solver"]),
        grad_batch_size=cfg["server"]["grad_batch_size"], loss=setup.loss,
    )  # fmt: skip
    deterministic = cfg["client"]["batch_size"] is None and cfg["server"]["grad_batch_size"] is None
    oracle = FederatedOracle(  # the layout only: a pool's object store holds the only copy of the examples
        runtime, clients.layout, server, group_weights=weights, batch_size=cfg["client"]["batch_size"],
        deterministic=deterministic, device=device,
    )  # fmt: skip
    state = method.init(Weights.from_model(server.model), seed=seed_of(cfg, "method"), oracle=oracle)
    return Run(method, state, oracle, server, _on(setup.bundle.test, device), setup.loss)


def check_setup(cfg: Mapping[str, Any]) -> Setup:
    """Build ``cfg``'s data, partition and model once, on the CPU; one line on what does not fit;
    returns what it built.

    The model runs forward on two training examples, and a model that normalises with batch
    statistics is refused. (The ``meta`` device would spare the model's memory, but its first
    forward pass imports torch's meta kernels: 1.2 s measured, about what building a ResNet-18
    on the CPU costs here, 1.1 s with torchvision's import, and far more than an MLP.)
    """
    setup = prepare(cfg, device=torch.device("cpu"))  # the trial's node resolves its device (a GPU the driver may lack)
    model = setup.model_fn()
    check_model(model, cfg)
    sample = setup.bundle.train.x[:2]
    try:
        with torch.no_grad():
            outputs = model(sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model._target_={shown(cfg['model']['_target_'])} does not fit the data's inputs "
            f"{tuple(setup.bundle.input_shape)}: {line}"
        ) from None
    if not (isinstance(outputs, torch.Tensor) and outputs.shape[0] == len(sample)):
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ConfigError(f"model._target_={shown(cfg['model']['_target_'])} returned {shape} for {len(sample)} inputs")
    try:
        setup.loss(outputs, setup.bundle.train.y[:2])
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"loss._target_={shown(cfg['loss']['_target_'])} does not fit the model's outputs: {line}") from None
    return setup


def check_method(cfg: Mapping[str, Any], setup: Setup) -> None:
    """One line when ``cfg``'s method needs what its federation does not give (client groups by
    name, the server's own data)."""
    check_federation(components.build("method", cfg["method"]), tuple(setup.partition.clients), tuple(setup.partition.server))


def check_model(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Refuse a model that normalises with batch statistics (one line)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            f"model._target_={shown(cfg['model']['_target_'])} uses BatchNorm, whose running statistics are never "
            "federated and whose batch statistics mix examples; use GroupNorm or no normalisation"
        )
