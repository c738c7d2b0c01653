"""The server's proximal step, shared by VRCS and full-communication sliding.

    x⁺ = argmin_x  ⟨v, x⟩ + ‖x − c‖² / (2θ) + h1(x)

solved approximately by a torch optimizer over the server's data, starting at
the centre c. The linear and quadratic terms have the closed-form gradient
``v + (x − c)/θ``, which is added into ``.grad`` after the data-loss backward
instead of being differentiated by autograd (STYLE.md §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

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
