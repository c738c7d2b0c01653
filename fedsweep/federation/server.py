"""The server: its model, its own data per client group (optional), its gradients and its argmin solve.

h1 = Σ_G λ_G G1 over the groups it holds data of, with the groups' weights in the objective
(½ each in VRCS's federation: h1 = (f1 + g1)/2)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedsweep.task import Dataset
from fedsweep.federation.solvers import Objective, OptimizerFactory, solve_lbfgs, solve_steps
from fedsweep.algorithms.protocols import Solution
from fedsweep.core.errors import SolverError
from fedsweep.algorithms.protocols import Group
from fedsweep.core.errors import ConfigError
from fedsweep.task.compute import CHUNK, loss_fn, mean_grads, mean_hvp
from fedsweep.task.losses import Loss, cross_entropy
from fedsweep.core.weights import Weights


@dataclass(frozen=True)
class ServerConfig:
    solver: str  # "lbfgs": L-BFGS on all the data to a tolerance; "optimizer": epochs of optimizer.*
    tolerance: float | None  # accept x⁺ once θ‖∇A(x⁺)‖ ≤ tolerance · ‖x⁺ − c‖ (float64); null: optimizer only, unchecked
    max_steps: int  # lbfgs: at most this many iterations per solve
    epochs: int  # optimizer: passes over the server's data per argmin solve
    batch_size: int | None  # optimizer: minibatch per part (f1 and g1); None = full data, one step per epoch
    grad_batch_size: int | None  # minibatch for ∇f1/∇g1 in the corrections; None = exact

    def __post_init__(self) -> None:
        if self.solver not in ("lbfgs", "optimizer"):
            raise ConfigError(f"server.solver must be lbfgs or optimizer, got server.solver={self.solver!r}")
        if self.tolerance is None and self.solver == "lbfgs":
            raise ConfigError("server.tolerance must be a number > 0 with server.solver=lbfgs, got server.tolerance=None")
        if self.tolerance is not None and not (_is_number(self.tolerance) and 0 < self.tolerance < math.inf):
            raise ConfigError(f"server.tolerance must be a finite number > 0, got server.tolerance={self.tolerance!r}")
        for key in ("max_steps", "epochs"):
            value = getattr(self, key)
            if not (_is_int(value) and value >= 1):
                raise ConfigError(f"server.{key} must be a positive integer, got server.{key}={value!r}")
        for key in ("batch_size", "grad_batch_size"):
            value = getattr(self, key)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ConfigError(f"server.{key} must be a positive integer or null, got server.{key}={value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Server:
    """Holds h1 = Σ_G λ_G G1 on the server's own data (``data``: group → its part; may be empty)."""

    def __init__(
        self,
        model: nn.Module,
        data: dict[Group, Dataset],
        *,
        group_weights: dict[Group, float],
        config: ServerConfig,
        make_optimizer: OptimizerFactory,
        loss: Loss = cross_entropy,
    ) -> None:
        self.model = model
        self.loss = loss
        self.data = data
        self.group_weights = {g: group_weights[g] for g in data}
        self.config = config
        self.make_optimizer = make_optimizer
        self._model64: nn.Module | None = None  # the float64 copy the solves run in

    def grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point on the same minibatch (drawn by ``seed``; ``None``: all the data)."""
        batch_size = None if seed is None else self.config.grad_batch_size
        return mean_grads(self.model, self.data[group], points, batch_size=batch_size, seed=seed, loss=self.loss)

    def hvp(self, group: Group, point: Weights, vector: Weights, seed: int | None, *, batch_size: int | None) -> Weights:
        """∇²G1(point) · vector on the minibatch drawn by ``seed`` (``batch_size`` None: all the data)."""
        return mean_hvp(self.model, self.data[group], point, vector, batch_size=batch_size, seed=seed, loss=self.loss)

    def steps_per_epoch(self) -> int:
        bs = self.config.batch_size
        n = max(len(part) for part in self.data.values())
        return 1 if bs is None or bs >= n else math.ceil(n / bs)

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        """argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + (f1 + g1)(x)/2 by the configured solver, accepted
        when its residual is within ``tolerance`` (default ``server.tolerance``), else SolverError."""
        tolerance = self.config.tolerance if tolerance is None else tolerance
        model64, data64 = self._float64()
        if self.config.solver == "lbfgs":
            return solve_lbfgs(
                model64, lambda: self._full_loss(model64, data64), linear=linear, center=center, theta=theta,
                tolerance=tolerance, max_steps=self.config.max_steps, dtype=center.dtype,
            )  # fmt: skip
        x = self._argmin_optimizer(linear, center, theta, seed)
        objective = Objective(model64, lambda: self._full_loss(model64, data64), linear=linear, center=center, theta=theta)
        value, rho = objective.at(x.to(x.device, torch.float64))
        steps = self.config.epochs * self.steps_per_epoch()
        if tolerance is not None and not rho <= tolerance:
            raise SolverError("epochs", residual=rho, steps=steps, tolerance=tolerance, theta=theta)
        return Solution(x, value, steps, rho)

    def _float64(self) -> tuple[nn.Module, dict[Group, Dataset]]:
        """The server's model and data in float64 (made once): the precision the solves are judged in."""
        if self._model64 is None:
            self._model64 = copy.deepcopy(self.model).to(torch.float64)
            self._data64 = {
                g: Dataset(d.x.to(torch.float64), d.y.to(torch.float64) if torch.is_floating_point(d.y) else d.y)
                for g, d in self.data.items()
            }
        return self._model64, self._data64

    def _full_loss(self, model: nn.Module, data: dict[Group, Dataset]) -> torch.Tensor:
        """h1 = ½(f1 + g1) of ``model`` on all of ``data``."""
        model.train()
        first = next(iter(data.values()))
        total = torch.zeros((), device=first.x.device, dtype=first.x.dtype)
        for group, part in data.items():
            for start in range(0, len(part), CHUNK):
                xs, ys = part.x[start : start + CHUNK], part.y[start : start + CHUNK]
                total = total + self.group_weights[group] * loss_fn(model, xs, ys, self.loss) * (len(ys) / len(part))
        return total

    def _argmin_optimizer(self, linear: Weights, center: Weights, theta: float, seed: int) -> Weights:
        """``epochs`` passes of the configured torch optimizer. Each step takes a minibatch of every
        part (each reshuffled every epoch, the smaller ones cycling) and uses Σ_G λ_G G1_batch."""
        per_epoch = self.steps_per_epoch()
        bs = self.config.batch_size
        gen = torch.Generator().manual_seed(seed)
        perms: dict[Group, torch.Tensor] = {}

        def data_loss(step: int) -> torch.Tensor:
            i = step % per_epoch
            if bs is not None and i == 0:
                perms.update({g: torch.randperm(len(d), generator=gen) for g, d in self.data.items()})
            self.model.train()
            batches = {g: _minibatch(part, perms.get(g), i, bs) for g, part in self.data.items()}
            return sum(self.group_weights[g] * loss_fn(self.model, b.x, b.y, self.loss) for g, b in batches.items())

        return solve_steps(
            self.model,
            data_loss,
            linear=linear,
            center=center,
            theta=theta,
            steps=self.config.epochs * per_epoch,
            make_optimizer=self.make_optimizer,
        )


def _minibatch(part: Dataset, perm: torch.Tensor | None, i: int, batch_size: int | None) -> Dataset:
    """The i-th minibatch of ``part`` under ``perm``, wrapping around when ``part`` is the smaller one."""
    if perm is None or batch_size is None:
        return part
    b = min(batch_size, len(part))
    idx = perm[torch.arange(i * b, (i + 1) * b) % len(part)]
    return part.subset(idx.to(part.x.device))
