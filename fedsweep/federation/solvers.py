"""The server's proximal step, shared by the sliding methods.

    x⁺ = argmin_x  A(x) = ⟨v, x⟩ + ‖x − c‖² / (2θ) + h1(x)

solved from the centre c to the relative inexactness of gradient sliding,

    ρ(x⁺) = θ·‖∇A(x⁺)‖ / ‖x⁺ − c‖ ≤ tolerance

(Kovalev, Beznosikov, Borodich, Gasnikov, Scutari: "Optimal gradient sliding and its
application to distributed optimization under similarity", NeurIPS 2022,
https://arxiv.org/abs/2205.15136). A solve is accepted only when ρ, measured in float64 at
the point it returns (rounded to the model's dtype), is within the tolerance; otherwise it
raises :class:`SolverError` saying why. Two solvers:

* :func:`solve_lbfgs` (the default): L-BFGS with a strong-Wolfe line search on all the
  server's data, in float64. In float32 the line search cannot see decreases of A below one
  rounding step of A, so near a fixed point it stalls while ‖∇A‖ is still large; in float64
  it keeps moving.
* :func:`solve_steps`: a fixed number of steps of a torch optimizer on minibatches, whose
  residual is then measured the same way.

The linear and quadratic terms have the closed-form gradient ``v + (x − c)/θ``, which is
added into ``.grad`` after the data-loss backward instead of being differentiated by
autograd (STYLE.md §7).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from torch import nn

from fedsweep.algorithms.protocols import Solution
from fedsweep.core.checks import OPTIMIZER_RANGES, check, check_keys, first_line, shown
from fedsweep.core.errors import ConfigError, SolverError
from fedsweep.core.weights import Weights

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""``torch.optim.<Name>`` with its settings, awaiting the parameters (a ``functools.partial``)."""
DataLoss = Callable[[], torch.Tensor]
"""h1 at the model's current parameters on all the server's data (a graph to backpropagate)."""

MAX_RESTARTS = 3  # fresh L-BFGS memories: after a step into non-finite values (with a tenth of the first
# step), or after a block of iterations without a decrease
FLOOR = 1e-2  # a float64 iterate this far inside the tolerance whose rounding is not: the dtype's floor


def residual(theta: float, grad_norm: float, moved: float) -> float:
    """ρ = θ‖∇A‖/‖x − c‖; 0 when ∇A = 0 (x = c is then exact), ∞ when x = c but ∇A ≠ 0."""
    if grad_norm == 0.0:
        return 0.0
    return theta * grad_norm / moved if moved > 0 else math.inf


class Objective:
    """A(x) and ∇A(x) at a float64 model's parameters: h1 by autograd, the linear and quadratic
    terms in closed form (added into ``.grad``)."""

    def __init__(self, model: nn.Module, data_loss: DataLoss, *, linear: Weights, center: Weights, theta: float) -> None:
        self.model, self.data_loss, self.theta = model, data_loss, theta
        dtype = next(model.parameters()).dtype
        self.linear = linear.to(linear.device, dtype)
        self.center = center.to(center.device, dtype)
        self.x = Weights.from_model(model).detach()  # views of the parameters
        self.diff = Weights.zeros_like(self.center)

    def __call__(self) -> torch.Tensor:
        """A at the parameters, ∇A in their ``.grad`` (a closure for ``torch.optim``)."""
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.zero_()
        h1 = self.data_loss()
        h1.backward()
        Weights.sub(self.x, self.center, out=self.diff)
        Weights.grad_views(self.model).add_(self.linear).axpy_(1.0 / self.theta, self.diff)
        return h1.detach() + Weights.dot(self.linear, self.diff) + self.diff.norm() ** 2 / (2 * self.theta)

    def measure(self) -> tuple[float, float]:
        """``(A, ρ)`` at the parameters."""
        value = float(self())
        grad_norm = float(Weights.grad_views(self.model).norm())
        return value, residual(self.theta, grad_norm, float(self.diff.norm()))

    def at(self, point: Weights) -> tuple[float, float]:
        """``(A, ρ)`` at ``point`` (the parameters end there)."""
        point.to_model(self.model)
        return self.measure()


def solve_lbfgs(
    model: nn.Module,
    data_loss: DataLoss,
    *,
    linear: Weights,
    center: Weights,
    theta: float,
    tolerance: float,
    max_steps: int,
    dtype: torch.dtype,
    history: int = 10,
    check_every: int = 5,
) -> Solution:
    """``argmin A`` by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``) on
    ``model`` (float64: the precision the solve runs in), checked every ``check_every``
    iterations, at most ``max_steps``. A candidate is accepted when ρ ≤ ``tolerance`` at the
    candidate rounded to ``dtype`` (what the caller gets). The line search adapts the step to
    θ and to h1's curvature, so the solve cannot overshoot as a fixed step with lr/θ > 2 does.
    Memory: L-BFGS keeps 2·``history`` vectors of the model's size.

    Raises:
        SolverError: the tolerance was not reached (``max_steps``, ``stalled``, ``precision``,
            ``overflow``).
    """
    objective = Objective(model, data_loss, linear=linear, center=center, theta=theta)
    x = objective.x
    objective.center.to_model(model)

    def lbfgs(lr: float) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            model.parameters(), lr=lr, max_iter=check_every, history_size=history,
            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0,
        )  # fmt: skip

    def closure() -> torch.Tensor:
        value = objective()
        if not torch.isfinite(value):  # a trial step into overflow: a huge finite value makes the
            Weights.grad_views(model).zero_()  # line search step back instead of interpolating with inf
            return torch.full_like(value, 1e300)
        return value

    value, rho = objective.measure()
    if rho == 0.0:  # ∇A(c) = 0: the centre is the argmin
        return Solution(x.to(x.device, dtype).clone(), value, 0, 0.0)
    optimizer, lr = lbfgs(1.0), 1.0
    good = x.clone()  # the last finite iterate: a line search into a non-finite region restarts there
    done, restarts = 0, 0  # done: iterations of earlier (restarted) optimizers

    def steps() -> int:
        return done + optimizer.state[optimizer._params[0]].get("n_iter", 0)

    def fail(reason: str, rho: float) -> SolverError:
        return SolverError(reason, residual=rho, steps=steps(), tolerance=tolerance, theta=theta)

    while steps() < max_steps:
        optimizer.param_groups[0]["max_iter"] = min(check_every, max_steps - steps())
        optimizer.step(closure)
        before = value
        value, rho = objective.measure()
        if not math.isfinite(value):
            x.copy_(good)
            if restarts == MAX_RESTARTS:
                raise fail("overflow", objective.measure()[1])
            done, restarts, lr = steps(), restarts + 1, lr / 10
            optimizer = lbfgs(lr)  # fresh curvature pairs, a shorter first step
            value = before
            continue
        good.copy_(x)
        if rho <= tolerance:
            candidate = x.to(x.device, dtype).clone()
            rounded_value, rounded_rho = objective.at(candidate.to(x.device, x.dtype))
            if rounded_rho <= tolerance:
                return Solution(candidate, rounded_value, steps(), rounded_rho)
            x.copy_(good)  # back to the float64 iterate
            # rounding alone costs more than the tolerance, or more float64 precision cannot help
            if rounded_rho - rho > tolerance or rho <= FLOOR * tolerance or not value < before:
                raise fail("precision", rounded_rho)
        elif not value < before:  # a whole block without a float64 decrease: curvature pairs that
            if restarts == MAX_RESTARTS:  # mislead (a kink of a ReLU network): a fresh L-BFGS starts
                raise fail("stalled", rho)  # from steepest descent
            done, restarts, optimizer = steps(), restarts + 1, lbfgs(lr)
    raise fail("max_steps", rho)


def solve_steps(
    model: nn.Module,
    data_loss: Callable[[int], torch.Tensor],
    *,
    linear: Weights,
    center: Weights,
    theta: float,
    steps: int,
    make_optimizer: OptimizerFactory,
) -> Weights:
    """``steps`` steps of a torch optimizer on ∇A, from the centre: ``data_loss(step)`` gives
    h1 on that step's minibatch at the model's parameters. Returns a detached copy of the
    last iterate (its residual is the caller's to measure)."""
    objective = Objective(model, lambda: data_loss(0), linear=linear, center=center, theta=theta)
    objective.center.to_model(model)
    optimizer = make_optimizer(model.parameters())
    for step in range(steps):
        objective.data_loss = functools.partial(data_loss, step)
        objective()
        optimizer.step()
    return objective.x.clone()


class Problem(Protocol):
    """What a solver needs of the server: its model, and h1 in float64 or on minibatches."""

    model: nn.Module

    def float64(self) -> tuple[nn.Module, DataLoss]:
        """A float64 copy of the model and h1 on all the server's data at its parameters."""

    def minibatch_loss(self, model: nn.Module, batch_size: int | None, seed: int) -> tuple[Callable[[int], torch.Tensor], int]:
        """``data_loss(step)``: h1 on that step's minibatch of every part at ``model``'s parameters,
        and the steps per epoch."""


class LBFGS:
    """The default solver: :func:`solve_lbfgs` in float64 on all the server's data, accepted at
    ``tolerance`` (θ‖∇A(x⁺)‖ ≤ tolerance·‖x⁺ − c‖), at most ``max_steps`` iterations a solve."""

    def __init__(self, *, tolerance: float = 0.1, max_steps: int = 300, history: int = 10) -> None:
        check_keys("solver", tolerance=(tolerance, "> 0"), max_steps=(max_steps, "int >= 1"), history=(history, "int >= 1"))
        self.tolerance, self.max_steps, self.history = tolerance, max_steps, history

    def solve(self, problem: Problem, *, linear: Weights, center: Weights, theta: float, seed: int,
              tolerance: float | None = None) -> Solution:  # fmt: skip
        model64, data_loss = problem.float64()
        return solve_lbfgs(
            model64, data_loss, linear=linear, center=center, theta=theta, history=self.history,
            tolerance=self.tolerance if tolerance is None else tolerance, max_steps=self.max_steps, dtype=center.dtype,
        )  # fmt: skip


class OptimizerSteps:
    """``epochs`` passes of a torch optimizer (``optimizer``: e.g. ``torch.optim.SGD`` with its
    settings) on minibatches of every part of the server's data (``batch_size`` per part, the
    smaller parts cycling; None: full batch), after which the residual is measured in float64
    and checked against ``tolerance`` (None: accepted unchecked, a fixed-step solve)."""

    def __init__(
        self, *, optimizer: OptimizerFactory, epochs: int = 5, batch_size: int | None = 32, tolerance: float | None = None
    ) -> None:
        check_keys("solver", epochs=(epochs, "int >= 1"), batch_size=(batch_size, "int >= 1 or null"),
                   tolerance=(tolerance, "> 0 or null"))  # fmt: skip
        if not callable(optimizer):
            raise ConfigError(f"solver.optimizer must name a torch optimizer by _target_, got solver.optimizer={shown(optimizer)}")
        for key, value in getattr(optimizer, "keywords", {}).items():  # a partial's settings: finite, in range
            if key in OPTIMIZER_RANGES:
                check(f"solver.optimizer.{key}", value, OPTIMIZER_RANGES[key])
        factory = getattr(optimizer, "func", optimizer)
        name = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__name__', '')}"
        try:  # torch checks its settings (lr >= 0, ...) when it is made: once here, on a stand-in parameter
            made = optimizer([nn.Parameter(torch.zeros(1))])
        except (TypeError, ValueError, NotImplementedError) as err:
            raise ConfigError(f"solver.optimizer ({name.strip('.')}): {first_line(err)}") from None
        if not isinstance(made, torch.optim.Optimizer):
            raise ConfigError(f"solver.optimizer ({name.strip('.')}) made a {type(made).__name__}, not a torch optimizer")
        self.optimizer, self.epochs, self.batch_size, self.tolerance = optimizer, epochs, batch_size, tolerance

    def solve(self, problem: Problem, *, linear: Weights, center: Weights, theta: float, seed: int,
              tolerance: float | None = None) -> Solution:  # fmt: skip
        data_loss, per_epoch = problem.minibatch_loss(problem.model, self.batch_size, seed)
        steps = self.epochs * per_epoch
        x = solve_steps(problem.model, data_loss, linear=linear, center=center, theta=theta, steps=steps,
                        make_optimizer=self.optimizer)  # fmt: skip
        model64, full_loss = problem.float64()
        value, rho = Objective(model64, full_loss, linear=linear, center=center, theta=theta).at(x.to(x.device, torch.float64))
        tolerance = self.tolerance if tolerance is None else tolerance
        if tolerance is not None and not rho <= tolerance:
            raise SolverError("epochs", residual=rho, steps=steps, tolerance=tolerance, theta=theta)
        return Solution(x, value, steps, rho)
