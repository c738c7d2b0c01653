"""The server's argmin: closed-form prox gradient = autograd's, solves within their tolerance of the
closed form, and no solve accepted above its tolerance, through the solvers and through the methods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsweep.core.errors import DivergedError
from fedsweep.algorithms import VRCS, Sliding
from fedsweep.core.errors import SolverError
from fedsweep.federation.solvers import solve_lbfgs, solve_steps
from fedsweep.core.weights import Weights
from tests.least_squares import LeastSquaresFederation


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

    new = solve_steps(
        model, lambda step: F.cross_entropy(model(x_in), y_in), linear=linear, center=center, theta=theta, steps=2,
        make_optimizer=lambda p: torch.optim.SGD(p, lr=lr),
    )  # fmt: skip
    for got, want in zip(new.tensors, params.tensors):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


def _least_squares(seed):
    torch.manual_seed(seed)
    n, d = 60, 8
    A, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    center = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})
    linear = Weights({"weight": torch.randn(1, d, dtype=torch.float64)})

    def optimum(theta):
        H = A.T @ A / n + torch.eye(d, dtype=torch.float64) / theta
        return torch.linalg.solve(H, A.T @ b / n - linear["weight"][0] + center["weight"][0] / theta)

    return A, b, center, linear, optimum


def test_fixed_step_solve_reaches_the_closed_form_optimum():
    A, b, center, linear, optimum = _least_squares(1)
    model = nn.Linear(8, 1, bias=False).double()
    x = solve_steps(
        model, lambda step: ((model(A).squeeze(1) - b) ** 2).mean() / 2, linear=linear, center=center, theta=0.5,
        steps=3000, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip
    torch.testing.assert_close(x["weight"][0], optimum(0.5), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("theta", "tolerance"), [(0.01, 0.1), (1.0, 0.1), (100.0, 0.01), (1.0, 1e-6)])
def test_lbfgs_solve_is_within_its_tolerance_of_the_closed_form(theta, tolerance):
    """ρ ≤ ε and A (1/θ)-strongly convex give ‖x⁺ − x*‖ ≤ ε‖x⁺ − c‖."""
    A, b, center, linear, optimum = _least_squares(3)
    model = nn.Linear(8, 1, bias=False).double()
    solution = solve_lbfgs(
        model, lambda: ((model(A).squeeze(1) - b) ** 2).mean() / 2, linear=linear, center=center, theta=theta,
        tolerance=tolerance, max_steps=500, dtype=torch.float64,
    )  # fmt: skip
    x = solution.x["weight"][0]
    assert solution.residual <= tolerance and 1 <= solution.steps < 500
    assert (x - optimum(theta)).norm() <= tolerance * (x - center["weight"][0]).norm()


def test_a_solve_that_cannot_reach_its_tolerance_raises_instead_of_returning():
    """Near x = 1000·1, float32 rounds x⁺ by ~6e-5 while the step x⁺ − c is ~1e-2: a tolerance of
    1e-4 is met in float64 but not by the float32 answer, and the solve says so (precision) rather
    than return it; a budget too small says max_steps."""
    torch.manual_seed(4)
    n, d = 60, 8
    A = torch.randn(n, d, dtype=torch.float64)
    b = A @ torch.full((d,), 1000.0, dtype=torch.float64) + 0.1 * torch.randn(n, dtype=torch.float64)
    center = Weights({"weight": 1000.0 + 0.01 * torch.randn(1, d, dtype=torch.float64)})
    linear = Weights({"weight": torch.zeros(1, d, dtype=torch.float64)})
    model = nn.Linear(d, 1, bias=False).double()

    def loss():
        return ((model(A).squeeze(1) - b) ** 2).mean() / 2

    args = dict(linear=linear, center=center, theta=1.0, tolerance=1e-4)
    assert solve_lbfgs(model, loss, **args, max_steps=500, dtype=torch.float64).residual <= 1e-4
    with pytest.raises(SolverError) as err:
        solve_lbfgs(model, loss, **args, max_steps=500, dtype=torch.float32)
    assert err.value.reason == "precision" and err.value.residual > 1e-4
    with pytest.raises(SolverError) as err:
        solve_lbfgs(model, loss, **args, max_steps=1, dtype=torch.float64)
    assert err.value.reason == "max_steps" and err.value.steps == 1


def _run(federation, method, rounds, *, exact=False):
    """|x_t − x*| and the stats of each round of ``method`` until ``rounds`` or a SolverError (also
    returned); with ``exact``, the proximal step in closed form."""
    if exact:
        federation.oracle.argmin = federation.exact_argmin
    state, errors, stats = method.init(federation.x0(), seed=0, oracle=federation.oracle), [], []
    for _ in range(rounds):
        try:
            state, round_stats = method.round(state, federation.oracle)
        except SolverError as err:
            return errors, stats, err
        errors.append(federation.error(state.x))
        stats.append(round_stats)
    return errors, stats, None


def _rounds_to(errors, accuracy):
    return next((r + 1 for r, e in enumerate(errors) if e <= accuracy), math.inf)


@pytest.mark.parametrize("make", [lambda theta: Sliding(theta=theta), lambda theta: VRCS(theta=theta, p=0.3, q=0.5)],
                         ids=["sliding", "vrcs"])  # fmt: skip
def test_methods_with_the_default_solver_keep_pace_with_the_exact_prox(make):
    """On a float32 least-squares federation, θ = 0.5/δ: the default solver reaches |x − x*| ≤ 1e-4
    within 1.5x the rounds of the exact proximal step, every logged residual within the tolerance;
    run on, it stops with one line naming the solver's limit (float32's resolution) instead of
    freezing the iterate."""
    theta = 0.5 / LeastSquaresFederation().delta
    exact, _, _ = _run(LeastSquaresFederation(), make(theta), 100, exact=True)
    needed = _rounds_to(exact, 1e-4)
    assert needed < 60
    errors, stats, err = _run(LeastSquaresFederation(), make(theta), 300)
    assert _rounds_to(errors, 1e-4) <= 1.5 * needed
    assert all(s["argmin/residual"] <= 0.1 for s in stats)
    assert err is not None and err.reason == "precision" and "\n" not in str(err)
    assert min(errors) < 3e-5  # it stopped where float32 stops, not before


def test_a_tighter_tolerance_per_call_is_honoured():
    fed = LeastSquaresFederation()
    x = fed.x0()
    linear = Weights({"weight": torch.randn(1, 8)})
    loose = fed.oracle.argmin(linear, x, 0.2, 0)
    tight = fed.oracle.argmin(linear, x, 0.2, 0, tolerance=1e-4)
    assert tight.residual <= 1e-4 < loose.residual <= 0.1
    assert tight.steps > loose.steps


def test_the_fixed_step_solver_measures_its_residual_and_honours_the_tolerance():
    fed = LeastSquaresFederation(solver="steps", tolerance=1e-9)
    linear = Weights({"weight": torch.randn(1, 8)})
    with pytest.raises(SolverError) as err:
        fed.oracle.argmin(linear, fed.x0(), 0.2, 0)
    assert err.value.reason == "epochs" and err.value.residual > 1e-9
    unchecked = LeastSquaresFederation(solver="steps", tolerance=None)
    solution = unchecked.oracle.argmin(linear, unchecked.x0(), 0.2, 0)
    assert solution.residual == pytest.approx(err.value.residual, rel=1e-6) and solution.steps == 1


@pytest.mark.slow
def test_every_theta_ends_at_its_tolerance_or_stops_in_one_line(tmp_path):
    """θ from 1e-3 to 10 on digits: every logged round's solves are within the tolerance and every
    metric is finite, or the run stops with one line (θ far above 1/δ makes VRCS diverge)."""
    from fedsweep.experiment.config import compose
    from fedsweep.experiment.loop import run_experiment

    for theta in (1e-3, 1e-2, 0.1, 1.0, 10.0):
        history = []
        try:
            run_experiment(compose([f"method.theta={theta}", "rounds=4"]), log_dir=tmp_path / str(theta),
                           report=history.append, progress=False)  # fmt: skip
        except DivergedError as err:
            assert str(err).startswith(("diverged at round ", "stopped at round ")) and "\n" not in str(err)
        for m in history:
            assert all(math.isfinite(v) for k, v in m.items() if not k.startswith("target/"))
            assert m["argmin/residual"] <= 0.1, (theta, m["round"])
