"""The server's proximal step, shared by VRCS and full-communication sliding.

    x⁺ = argmin_x  ⟨v, x⟩ + ‖x − c‖² / (2θ) + h1(x)

solved approximately from the centre c, either to a stated inexactness by L-BFGS on all
the server's data (:func:`solve_argmin_lbfgs`, the default) or by a fixed
number of steps of a torch optimizer on minibatches (:func:`solve_argmin`). The linear and quadratic terms have the closed-form gradient
``v + (x − c)/θ``, which is added into ``.grad`` after the data-loss backward
instead of being differentiated by autograd (STYLE.md §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedsweep.weights import Weights

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def solve_argmin(
    model: nn.Module,
    data_loss: Callable[[int], torch.Tensor],
    *,
    linear: Weights,
    center: Weights,
    theta: float,
    steps: int,
    make_optimizer: OptimizerFactory,
) -> tuple[Weights, float]:
    """Approximate ``argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + h1(x)``.

    Args:
        model: the server's model; its parameters are overwritten and end at x⁺.
        data_loss: ``data_loss(step)`` returns h1 on that step's minibatch at the
            model's current parameters (a graph to backpropagate through).
        linear: the vector v of the linear term.
        center: the centre c of the quadratic term, also the starting point.
        theta: θ > 0, the step size of the proximal term.
        steps: optimizer steps.
        make_optimizer: builds a fresh torch optimizer over the parameters.

    Returns:
        ``(x⁺, value)``: a detached copy of the solution, and the objective
        ``h1 + ⟨v, x − c⟩ + ‖x − c‖²/(2θ)`` at the last step's iterate and batch
        (⟨v, c⟩ is a constant and left out), computed from the same difference
        used for the gradient, so logging costs no extra pass.
    """
    center.to_model(model)
    params = Weights.from_model(model)
    optimizer = make_optimizer(model.parameters())
    diff = Weights.zeros_like(center)
    value = math.nan
    for step in range(steps):
        optimizer.zero_grad(set_to_none=False)
        loss = data_loss(step)
        loss.backward()
        grads = Weights.grad_views(model)
        Weights.sub(params.detach(), center, out=diff)
        grads.add_(linear).axpy_(1.0 / theta, diff)
        if step == steps - 1:
            value = (loss.detach() + Weights.dot(linear, diff) + diff.norm() ** 2 / (2 * theta)).item()
        optimizer.step()
    return params.clone(), value


MAX_RESTARTS = 3  # L-BFGS restarts from the last finite iterate, each with a tenth of the step


FLOAT_FLOOR = 1e-5  # ‖∇A‖ this far below its start is as exact as float32 gets
STALL = 1e-6  # ten iterations that lower A by less than this (relative) have reached float32's floor


@dataclass(frozen=True)
class SolveStats:
    """How a solve ended: the steps taken, the inexactness reached, ρ = θ·‖∇A(x⁺)‖ / ‖x⁺ − c‖,
    and whether it converged: ρ ≤ tolerance, or as exact as float32 allows, i.e. ‖∇A‖ down to
    ``FLOAT_FLOOR`` of its value at the centre or A no longer decreasing (``STALL``): when the
    outer method has converged, x⁺ − c is so small that ρ ≤ tolerance asks for more than
    float32 holds, and the logged ρ says how close the solve came."""

    steps: int
    residual: float
    converged: bool


def solve_argmin_lbfgs(
    model: nn.Module,
    data_loss: Callable[[], torch.Tensor],
    *,
    linear: Weights,
    center: Weights,
    theta: float,
    tolerance: float,
    max_steps: int,
    history: int = 10,
    check_every: int = 10,
) -> tuple[Weights, float, SolveStats]:
    """``argmin_x A(x) = ⟨v, x⟩ + ‖x − c‖²/(2θ) + h1(x)`` on all the server's data by L-BFGS
    with a strong-Wolfe line search (``torch.optim.LBFGS``), stopped by the relative
    inexactness criterion of gradient sliding,

        ‖∇A(x⁺)‖ ≤ tolerance · ‖x⁺ − c‖ / θ

    checked every ``check_every`` iterations (Kovalev, Beznosikov, Borodich, Gasnikov,
    Scutari: "Optimal gradient sliding and its application to distributed optimization
    under similarity", NeurIPS 2022, https://arxiv.org/abs/2205.15136), or after
    ``max_steps`` iterations. The line search adapts the step to θ and to h1's curvature,
    so the solve cannot overshoot the way a fixed step with lr/θ > 2 does; on digits
    θ = 10 took 50 iterations where backtracking gradient descent had not converged after
    1,200. ∇A = ∇h1 + v + (x − c)/θ, the last two terms in closed form (STYLE.md §7).
    Memory: L-BFGS keeps 2·``history`` vectors of the model's size.

    Returns:
        ``(x⁺, A(x⁺) − ⟨v, c⟩, stats)``.
    """
    center.to_model(model)
    x = Weights.from_model(model).detach()  # views of the parameters
    diff = Weights.zeros_like(center)

    def lbfgs(lr: float) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            model.parameters(), lr=lr, max_iter=check_every, history_size=history,
            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0,
        )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        h1 = data_loss()
        h1.backward()
        Weights.sub(x, center, out=diff)
        grad = Weights.grad_views(model).add_(linear).axpy_(1.0 / theta, diff)
        value = h1.detach() + Weights.dot(linear, diff) + diff.norm() ** 2 / (2 * theta)
        if not torch.isfinite(value):  # a trial step into overflow: a huge finite value makes the
            grad.zero_()  # line search step back instead of interpolating with inf or NaN
            return torch.full_like(value, 1e30)
        return value

    optimizer, lr = lbfgs(1.0), 1.0
    closure()
    start_norm = float(Weights.grad_views(model).norm())  # ‖∇A(c)‖
    good = x.clone()  # the last finite iterate: a line search into a non-finite region restarts there
    done, restarts, residual, value = 0, 0, math.inf, math.nan  # done: iterations of earlier optimizers
    converged = False
    while (steps := done + optimizer.state[optimizer._params[0]].get("n_iter", 0)) < max_steps:
        optimizer.param_groups[0]["max_iter"] = min(check_every, max_steps - steps)
        optimizer.step(closure)
        before, value = value, float(closure())  # A and ∇A at the iterate
        if not value < 1e30:  # non-finite, or the overflow marker
            x.copy_(good)
            if restarts == MAX_RESTARTS:
                value = float(closure())
                break  # give back the last finite iterate; the residual says how inexact it is
            done, restarts, lr = steps, restarts + 1, lr / 10
            optimizer = lbfgs(lr)  # fresh curvature pairs, a shorter first step
            continue
        good.copy_(x)
        moved, grad_norm = float(diff.norm()), float(Weights.grad_views(model).norm())
        residual = theta * grad_norm / moved if moved > 0 else math.inf
        stalled = math.isfinite(before) and before - value <= STALL * abs(value)
        converged = residual <= tolerance or grad_norm <= FLOAT_FLOOR * start_norm or stalled
        if converged:
            break
    steps = done + optimizer.state[optimizer._params[0]].get("n_iter", 0)
    return x.clone(), value, SolveStats(steps=steps, residual=residual, converged=converged)
