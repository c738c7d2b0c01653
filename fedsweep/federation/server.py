"""The server: its model, its own data per client group (optional), its gradients and its argmin solve.

h1 = Σ_G λ_G G1 over the groups it holds data of, with the groups' weights in the objective
(½ each in VRCS's federation: h1 = (f1 + g1)/2)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from fedsweep.task import Dataset
from fedsweep.algorithms.protocols import Group, Solution
from fedsweep.federation.solvers import DataLoss
from fedsweep.task.compute import CHUNK, loss_fn, mean_grads, mean_hvp
from fedsweep.task.losses import Loss, cross_entropy
from fedsweep.core.weights import Weights


class Solver(Protocol):
    """The server's argmin: a component named by ``solver._target_`` (``fedsweep.federation.solvers``)."""

    def solve(self, problem, *, linear: Weights, center: Weights, theta: float, seed: int,
              tolerance: float | None = None) -> Solution: ...  # fmt: skip


class Server:
    """Holds h1 = Σ_G λ_G G1 on the server's own data (``data``: group → its part; may be empty)."""

    def __init__(
        self,
        model: nn.Module,
        data: dict[Group, Dataset],
        *,
        group_weights: dict[Group, float],
        solver: Solver,
        grad_batch_size: int | None = None,
        loss: Loss = cross_entropy,
    ) -> None:
        self.model = model
        self.loss = loss
        self.data = data
        self.group_weights = {g: group_weights[g] for g in data}
        self.solver = solver
        self.grad_batch_size = grad_batch_size
        self._model64: nn.Module | None = None  # the float64 copy the solves run in

    def grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point on the same minibatch (drawn by ``seed``; ``None``: all the data)."""
        batch_size = None if seed is None else self.grad_batch_size
        return mean_grads(self.model, self.data[group], points, batch_size=batch_size, seed=seed, loss=self.loss)

    def hvp(self, group: Group, point: Weights, vector: Weights, seed: int | None, *, batch_size: int | None) -> Weights:
        """∇²G1(point) · vector on the minibatch drawn by ``seed`` (``batch_size`` None: all the data)."""
        return mean_hvp(self.model, self.data[group], point, vector, batch_size=batch_size, seed=seed, loss=self.loss)

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        """argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + h1(x) by the solver, accepted when its residual
        is within ``tolerance`` (default: the solver's), else SolverError."""
        return self.solver.solve(self, linear=linear, center=center, theta=theta, seed=seed, tolerance=tolerance)

    def float64(self) -> tuple[nn.Module, DataLoss]:
        """The model in float64 (made once: the precision solves are judged in) and h1 on all the
        server's data, in float64, at its parameters."""
        if self._model64 is None:
            self._model64 = copy.deepcopy(self.model).to(torch.float64)
            self._data64 = {
                g: Dataset(d.x.to(torch.float64), d.y.to(torch.float64) if torch.is_floating_point(d.y) else d.y)
                for g, d in self.data.items()
            }
        model, data = self._model64, self._data64

        def full_loss() -> torch.Tensor:
            model.train()
            total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
            for group, part in data.items():
                for start in range(0, len(part), CHUNK):
                    xs, ys = part.x[start : start + CHUNK], part.y[start : start + CHUNK]
                    total = total + self.group_weights[group] * loss_fn(model, xs, ys, self.loss) * (len(ys) / len(part))
            return total

        return model, full_loss

    def minibatch_loss(self, model: nn.Module, batch_size: int | None, seed: int) -> tuple[Callable[[int], torch.Tensor], int]:
        """``data_loss(step)``: Σ_G λ_G G1 on that step's minibatch of every part (each reshuffled
        every epoch by ``seed``, the smaller ones cycling), and the steps per epoch."""
        n = max(len(part) for part in self.data.values())
        per_epoch = 1 if batch_size is None or batch_size >= n else math.ceil(n / batch_size)
        gen = torch.Generator().manual_seed(seed)
        perms: dict[Group, torch.Tensor] = {}

        def data_loss(step: int) -> torch.Tensor:
            i = step % per_epoch
            if batch_size is not None and i == 0:
                perms.update({g: torch.randperm(len(d), generator=gen) for g, d in self.data.items()})
            model.train()
            batches = {g: _minibatch(part, perms.get(g), i, batch_size) for g, part in self.data.items()}
            return sum(self.group_weights[g] * loss_fn(model, b.x, b.y, self.loss) for g, b in batches.items())

        return data_loss, per_epoch


def _minibatch(part: Dataset, perm: torch.Tensor | None, i: int, batch_size: int | None) -> Dataset:
    """The i-th minibatch of ``part`` under ``perm``, wrapping around when ``part`` is the smaller one."""
    if perm is None or batch_size is None:
        return part
    b = min(batch_size, len(part))
    idx = perm[torch.arange(i * b, (i + 1) * b) % len(part)]
    return part.subset(idx.to(part.x.device))
