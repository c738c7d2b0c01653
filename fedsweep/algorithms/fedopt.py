"""FedOpt: FedAvg's clients, and any ``torch.optim`` optimizer as the server's step.

Each round the participating clients S train from x as in FedAvg; the server treats the
negative mean update as a gradient and steps an optimizer with it:

    Δ = x − Σ_{i∈S} p_i y_i          (−Σ_{i∈S} w_i (y_i − x) with ``aggregation: unbiased``)
    x.grad ← Δ,  server_optimizer.step()

so SGD(lr=1) is FedAvg, and (the shipped configs, with Reddi et al.'s / Flower's defaults):

* ``fedavgm``: SGD with momentum β:  v ← β v + Δ,  x ← x − η v   (Hsu et al. 2019; Flower's FedAvgM)
* ``fedadagrad``: Adagrad:  v ← v + Δ²,  x ← x − η Δ / (√v + τ)   (Flower's FedAdagrad, exactly)
* ``fedadam``: Adam:  m ← β₁m + (1 − β₁)Δ,  v ← β₂v + (1 − β₂)Δ²,  x ← x − η m̂ / (√v̂ + τ).
  torch's Adam divides by the bias corrections (m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ)), which
  Reddi et al.'s Algorithm 2 and Flower's FedAdam do not: their first steps are smaller.
* ``fedyogi``: :class:`fedsweep.algorithms.yogi.Yogi`, v ← v − (1 − β₂) Δ² sign(v − Δ²) (no bias
  correction, as Reddi et al. and Flower).

``server_optimizer`` names the optimizer class by ``_target_`` (any ``torch.optim.Optimizer``
subclass, a user's own included) with its keyword arguments; the configs set ``_recursive_:
false`` so that Hydra hands that node over as it is. The optimizer's per-parameter state
(moments, step counts) is part of the method's state, by parameter name: each round loads a copy
into a fresh optimizer built from the config, steps it and keeps its new state. So checkpoints
carry it and a resumed run continues with identical numbers; its hyperparameters (``param_groups``)
always come from the config.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan: "Adaptive Federated
Optimization" (ICLR 2021), https://arxiv.org/abs/2003.00295. Hsu, Qi, Brown: "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification" (2019),
https://arxiv.org/abs/1909.06335.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fedsweep.algorithms.fedavg import FedAvg, participation_stats
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import OPTIMIZER_RANGES, check, first_line, shown
from fedsweep.core.errors import ConfigError
from fedsweep.core.targets import check_target
from fedsweep.core.weights import Weights

KEY = "method.server_optimizer"
ServerState = Mapping[str, Mapping[str, Any]]
"""The server optimizer's state: parameter name → that parameter's state (e.g. step, exp_avg)."""


@dataclass(frozen=True)
class FedOptState(MethodState):
    server: ServerState = field(default_factory=dict)


class FedOpt(FedAvg):
    """FedAvg whose server steps ``server_optimizer`` on the pseudo-gradient (see the module docstring)."""

    name = "fedopt"
    uses_torch_optim = True  # the server steps with a torch.optim optimizer (fedsweep.experiment.loop)

    def __init__(
        self,
        *,
        server_optimizer: Mapping[str, Any],
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
        aggregation: str = "self_normalized",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        name: str = "fedopt",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"method.name must be a non-empty string, got method.name={shown(name)}")
        self.server_class, self.server_args = server_optimizer_spec(server_optimizer)
        self.name = name
        super().__init__(
            local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation,
            aggregation=aggregation, momentum=momentum, weight_decay=weight_decay,
        )  # fmt: skip

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> FedOptState:
        x = x0.clone()
        return FedOptState(x=x, seed=seed, server=self._state_of(self._server_optimizer(x, {}), x))

    def round(self, state: FedOptState, oracle: GradientOracle) -> tuple[FedOptState, dict[str, float]]:
        seed, ids, weights = self.participants(state, oracle)
        sums = oracle.train(self.program, state.x, clients=ids, weights=weights, seed=seed)
        delta = sums["model"].axpy_(-weights.sum(), state.x).mul_(-1.0)  # Δ = −Σ w_i (y_i − x)
        x = state.x.clone()
        optimizer = self._server_optimizer(x, state.server)
        for p, g in zip(x.tensors, delta.tensors):
            p.grad = g
        optimizer.step()
        server = self._state_of(optimizer, x)
        for p in x.tensors:
            p.grad = None
        return replace(state, x=x, server=server, round=state.round + 1), {
            **participation_stats(oracle, ids),
            "norm/update": (x - state.x).norm().item(),
            "norm/pseudo_gradient": delta.norm().item(),
        }

    def _server_optimizer(self, x: Weights, saved: ServerState) -> torch.optim.Optimizer:
        """A fresh optimizer over x's tensors (stepped in place) holding a copy of ``saved``."""
        optimizer = self.server_class(x.tensors, **self.server_args)
        if saved:
            index = {name: i for i, name in enumerate(x.names)}
            state = {index[name]: {k: _copy(v) for k, v in s.items()} for name, s in saved.items()}
            optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        return optimizer

    @staticmethod
    def _state_of(optimizer: torch.optim.Optimizer, x: Weights) -> ServerState:
        return {name: dict(optimizer.state[p]) for name, p in zip(x.names, x.tensors) if optimizer.state.get(p)}


def server_optimizer_spec(node: Any, key: str = KEY) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class ``node._target_`` names and its keyword arguments, checked: one-line
    ConfigErrors naming ``key.<argument>`` (lists become tuples, as torch's ``betas``)."""
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        example = "(e.g. torch.optim.Adam)"
        raise ConfigError(f"{key} must name a torch.optim optimizer by {key}._target_ {example}, got {key}={shown(node)}")
    path = node["_target_"]
    check_target(f"{key}._target_", path)  # torch.optim, fedsweep or a named plug-in, before importing
    module, _, attr = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{key}._target_={shown(path)} cannot be imported: {first_line(err)}") from None
    if not (isinstance(target, type) and issubclass(target, torch.optim.Optimizer)):
        raise ConfigError(f"{key}._target_={shown(path)} is not a torch.optim.Optimizer subclass")
    first, *rest = inspect.signature(target).parameters.values()  # first: the parameters to optimize
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {p.name: p for p in rest if p.kind in named}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    args = {k: v for k, v in node.items() if k != "_target_"}
    for k, v in args.items():
        if k == first.name:
            raise ConfigError(f"{key}.{k} is set by the method (the server's x), not in the config")
        if k not in params and not takes_any:
            raise ConfigError(f"{key}.{k}={shown(v)} is not an argument of {path}; known: {', '.join(params)}")
        if k in OPTIMIZER_RANGES:
            check(f"{key}.{k}", v, OPTIMIZER_RANGES[k])
        if k == "betas" and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_in_unit(b) for b in v)):
            raise ConfigError(f"{key}.betas must be two numbers in [0, 1), got {key}.betas={shown(v)}")
    for k, p in params.items():
        if p.default is inspect.Parameter.empty and k not in args:
            raise ConfigError(f"missing config key {key}.{k} (an argument of {path})")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        target([torch.zeros(1)], **args)  # the optimizer's own checks of the other values
    except Exception as err:  # noqa: BLE001 - a user's optimizer may raise anything
        raise ConfigError(f"{key} ({path}): {first_line(err)}") from None
    return target, args


def _in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
