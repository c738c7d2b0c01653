"""Yogi as a ``torch.optim.Optimizer`` (torch has none), for FedYogi's server step.

    m ← β₁ m + (1 − β₁) g
    v ← v − (1 − β₂) g² sign(v − g²)
    x ← x − lr · m / (√v + eps)

with m = 0 and v = ``initial_accumulator_value`` at first, and no bias correction, as in Reddi et
al.'s Algorithm 2 and Flower's ``FedYogi`` (v only grows towards g² by an additive step, where
Adam's v ← β₂ v + (1 − β₂) g² forgets multiplicatively). With v = 0 at first, the first step is
Adam's without bias correction.

Zaheer, Reddi, Sachan, Kale, Kumar: "Adaptive Methods for Nonconvex Optimization" (NeurIPS 2018);
Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan: "Adaptive Federated
Optimization" (ICLR 2021), https://arxiv.org/abs/2003.00295.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class Yogi(torch.optim.Optimizer):
    """Yogi; defaults are Flower's FedYogi (η = 0.01, β = (0.9, 0.99), τ = 1e-3)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-3,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not initial_accumulator_value >= 0:
            raise ValueError(f"Invalid initial_accumulator_value: {initial_accumulator_value}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "initial_accumulator_value": initial_accumulator_value}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.full_like(p, group["initial_accumulator_value"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                g2 = g * g
                v.addcmul_(torch.sign(v - g2), g2, value=-(1 - beta2))
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss
