"""The server: its model, its f-like and g-like data, its gradients and its argmin solve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedsweep.data import Dataset
from fedsweep.methods.argmin import OptimizerFactory, SolveStats, solve_argmin, solve_argmin_lbfgs
from fedsweep.methods.oracle import Group
from fedsweep.errors import ConfigError
from fedsweep.task import CHUNK, Loss, cross_entropy, loss_fn, mean_grads, mean_hvp
from fedsweep.weights import Weights


@dataclass(frozen=True)
class ServerConfig:
    solver: str  # "lbfgs": L-BFGS on all the data to a tolerance; "optimizer": epochs of optimizer.*
    tolerance: float  # lbfgs: stop once θ‖∇A(x⁺)‖ ≤ tolerance · ‖x⁺ − c‖
    max_steps: int  # lbfgs: at most this many iterations per solve
    epochs: int  # optimizer: passes over the server's data per argmin solve
    batch_size: int | None  # optimizer: minibatch per part (f1 and g1); None = full data, one step per epoch
    grad_batch_size: int | None  # minibatch for ∇f1/∇g1 in the corrections; None = exact

    def __post_init__(self) -> None:
        if self.solver not in ("lbfgs", "optimizer"):
            raise ConfigError(f"server.solver must be lbfgs or optimizer, got server.solver={self.solver!r}")
        if not (_is_number(self.tolerance) and self.tolerance > 0):
            raise ConfigError(f"server.tolerance must be > 0, got server.tolerance={self.tolerance!r}")
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
    """Holds h1 = (f1 + g1)/2 on the server's own data."""

    def __init__(
        self,
        model: nn.Module,
        data: dict[Group, Dataset],
        *,
        config: ServerConfig,
        make_optimizer: OptimizerFactory,
        loss: Loss = cross_entropy,
    ) -> None:
        self.model = model
        self.loss = loss
        self.data = data
        self.config = config
        self.make_optimizer = make_optimizer
        self.solves: list[SolveStats] = []  # the lbfgs solver's account of each solve, read by the driver

    def grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point on the same minibatch (drawn by ``seed``; ``None``: all the data)."""
        batch_size = None if seed is None else self.config.grad_batch_size
        return mean_grads(self.model, self.data[group], points, batch_size=batch_size, seed=seed, loss=self.loss)

    def hvp(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> Weights:
        """∇²G1(point) · vector."""
        return mean_hvp(
            self.model, self.data[group], point, vector, batch_size=self.config.grad_batch_size, seed=seed, loss=self.loss
        )

    def steps_per_epoch(self) -> int:
        bs = self.config.batch_size
        n = max(len(self.data["f"]), len(self.data["g"]))
        return 1 if bs is None or bs >= n else math.ceil(n / bs)

    def argmin(self, linear: Weights, center: Weights, theta: float, seed: int) -> tuple[Weights, float]:
        """argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + (f1 + g1)(x)/2 by the configured solver."""
        if self.config.solver == "lbfgs":
            x, value, stats = solve_argmin_lbfgs(
                self.model,
                self._full_loss,
                linear=linear,
                center=center,
                theta=theta,
                tolerance=self.config.tolerance,
                max_steps=self.config.max_steps,
            )
            self.solves.append(stats)
            return x, value
        return self._argmin_optimizer(linear, center, theta, seed)

    def _full_loss(self) -> torch.Tensor:
        """h1 = ½(f1 + g1) on all the server's data."""
        self.model.train()
        total = torch.zeros((), device=self.data["f"].x.device)
        for part in self.data.values():
            for start in range(0, len(part), CHUNK):
                xs, ys = part.x[start : start + CHUNK], part.y[start : start + CHUNK]
                total = total + 0.5 * loss_fn(self.model, xs, ys, self.loss) * (len(ys) / len(part))
        return total

    def _argmin_optimizer(self, linear: Weights, center: Weights, theta: float, seed: int) -> tuple[Weights, float]:
        """``epochs`` passes of the configured torch optimizer. Each step takes a minibatch from f1
        and one from g1 (each part reshuffled every epoch, cycling the smaller one) and uses
        ½(f1_batch + g1_batch)."""
        per_epoch = self.steps_per_epoch()
        bs = self.config.batch_size
        gen = torch.Generator().manual_seed(seed)
        perms: dict[Group, torch.Tensor] = {}

        def data_loss(step: int) -> torch.Tensor:
            i = step % per_epoch
            if bs is not None and i == 0:
                perms.update({g: torch.randperm(len(d), generator=gen) for g, d in self.data.items()})
            bf, bg = (_minibatch(self.data[g], perms.get(g), i, bs) for g in ("f", "g"))
            self.model.train()
            return 0.5 * (loss_fn(self.model, bf.x, bf.y, self.loss) + loss_fn(self.model, bg.x, bg.y, self.loss))

        return solve_argmin(
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
