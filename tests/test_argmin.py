"""The server's argmin step: closed-form prox gradient = autograd's, and the solve reaches the optimum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsweep.methods.argmin import solve_argmin
from fedsweep.weights import Weights


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def test_closed_form_gradient_matches_autograd():
    """Two plain-SGD solver steps equal two steps on ∇[loss + ⟨v,x⟩ + ‖x−c‖²/(2θ)] taken by autograd
    (the second step is taken away from the centre, so the quadratic term counts)."""
    x_in, y_in = torch.randn(16, 5), torch.randint(0, 3, (16,))
    theta, lr = 0.7, 0.5
    model = small_model()
    center = Weights.from_model(model).clone()
    linear = Weights.zeros_like(center)
    for t in linear.tensors:
        t.normal_()

    reference = small_model()
    params = Weights.from_model(reference)
    for _ in range(2):
        objective = (
            F.cross_entropy(reference(x_in), y_in)
            + Weights.dot(linear, params)
            + (params - center).norm() ** 2 / (2 * theta)
        )
        grads = torch.autograd.grad(objective, params.tensors)
        with torch.no_grad():
            for p, g in zip(params.tensors, grads):
                p.sub_(lr * g)

    new, _ = solve_argmin(
        model,
        lambda step: F.cross_entropy(model(x_in), y_in),
        linear=linear,
        center=center,
        theta=theta,
        steps=2,
        make_optimizer=lambda p: torch.optim.SGD(p, lr=lr),
    )
    for got, want in zip(new.tensors, params.tensors):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


def test_solve_reaches_the_closed_form_optimum_on_least_squares():
    """h1(x) = ‖A x − b‖²/(2n): argmin ⟨v,x⟩ + ‖x−c‖²/(2θ) + h1 solves (AᵀA/n + I/θ) x = Aᵀb/n − v + c/θ."""
    torch.manual_seed(1)
    n, d, theta = 50, 6, 0.5
    A, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    center = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})
    linear = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})

    x, value = solve_argmin(
        model,
        lambda step: ((model(A).squeeze(1) - b) ** 2).mean() / 2,
        linear=linear,
        center=center,
        theta=theta,
        steps=3000,
        make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    H = A.T @ A / n + torch.eye(d, dtype=torch.float64) / theta
    optimum = torch.linalg.solve(H, A.T @ b / n - linear["weight"][0] + center["weight"][0] / theta)
    torch.testing.assert_close(x["weight"][0], optimum, rtol=1e-6, atol=1e-8)
    # the logged value is the objective (less the constant ⟨v, c⟩) at the last iterate
    xo = optimum
    expected = ((A @ xo - b) ** 2).mean() / 2 + linear["weight"][0] @ (xo - center["weight"][0])
    expected += ((xo - center["weight"][0]) ** 2).sum() / (2 * theta)
    assert abs(value - expected.item()) < 1e-6


def test_lbfgs_solve_is_within_its_tolerance_of_the_closed_form():
    """‖∇A(x⁺)‖ ≤ ε‖x⁺ − c‖/θ and A (1/θ)-strongly convex give ‖x⁺ − x*‖ ≤ ε‖x⁺ − c‖."""
    from fedsweep.methods.argmin import solve_argmin_lbfgs

    torch.manual_seed(3)
    n, d = 60, 8
    A, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    for theta, tolerance in ((0.01, 0.1), (1.0, 0.1), (100.0, 0.01)):
        model = nn.Linear(d, 1, bias=False).double()
        center = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})
        linear = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})
        x, value, stats = solve_argmin_lbfgs(
            model, lambda: ((model(A).squeeze(1) - b) ** 2).mean() / 2,
            linear=linear, center=center, theta=theta, tolerance=tolerance, max_steps=500,
        )  # fmt: skip
        H = A.T @ A / n + torch.eye(d, dtype=torch.float64) / theta
        optimum = torch.linalg.solve(H, A.T @ b / n - linear["weight"][0] + center["weight"][0] / theta)
        moved = (x["weight"][0] - center["weight"][0]).norm()
        assert stats.residual <= tolerance and 1 <= stats.steps < 500
        assert (x["weight"][0] - optimum).norm() <= tolerance * moved


def test_every_theta_ends_finite_at_its_tolerance_or_stops_in_one_line(tmp_path):
    """θ from 1e-3 to 10 on digits: each round's solves reach the tolerance and every metric is
    finite, or the run stops with the divergence error (θ far above 1/δ makes VRCS diverge)."""
    import math

    from fedsweep.config import compose
    from fedsweep.errors import DivergedError
    from fedsweep.experiment import run_experiment

    for theta in (1e-3, 1e-2, 0.1, 1.0, 10.0):
        history = []
        try:
            run_experiment(compose([f"method.theta={theta}", "rounds=4"]), log_dir=tmp_path / str(theta),
                           report=history.append, progress=False)  # fmt: skip
        except DivergedError as err:
            assert str(err).startswith("diverged at round ") and "\n" not in str(err)
        for m in history:
            assert all(math.isfinite(v) for k, v in m.items() if not k.startswith("target/"))
            assert m["argmin/unconverged"] == 0, (theta, m["round"])  # at the tolerance, or float32's floor
