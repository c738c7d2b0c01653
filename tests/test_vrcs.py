"""VRCS maths: Geometric convention, unbiased correction, convergence on least squares."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms.protocols import Solution
from fedsweep.algorithms.vrcs import VRCS, corrected_difference, group_weight, sample_local_steps
from fedsweep.core.weights import Weights
from tests.quadratic import QuadraticOracle


@pytest.mark.parametrize("q", [0.2, 0.5, 1.0])
def test_local_steps_are_geometric_from_zero(q):
    rng = np.random.default_rng(0)
    draws = np.array([sample_local_steps(rng, q) for _ in range(40_000)])
    assert draws.min() == 0
    assert abs((draws == 0).mean() - q) < 0.01  # P(K = 0) = q
    assert abs(draws.mean() - (1 - q) / q) < 0.05 * max(1.0, (1 - q) / q)
    if q == 1.0:
        assert draws.max() == 0


def test_group_weights():
    assert group_weight("f", 0.25) == pytest.approx(2.0)
    assert group_weight("g", 0.25) == pytest.approx(1 / 1.5)


def test_correction_expectation_is_exact():
    """p·ĝ(f) + (1 − p)·ĝ(g) = ∇h − ∇h1 at x, for any snapshot."""
    oracle = QuadraticOracle()
    x, x0 = torch.randn(oracle.dim, dtype=torch.float64), torch.randn(oracle.dim, dtype=torch.float64)
    def diff(G, point):
        w = oracle.wrap(point)
        return oracle.group_gradients(G, [w], None)[0] - oracle.server(G, [w], None)[0]

    snapshot = (diff("f", x0) + diff("g", x0)) / 2
    target = oracle.grad_h(x) - oracle.grad_h1(x)
    for p in (0.1, 0.5, 0.9):
        est_f = corrected_difference(snapshot, "f", diff("f", x) - diff("f", x0), p)
        est_g = corrected_difference(snapshot, "g", diff("g", x) - diff("g", x0), p)
        mean = p * est_f["x"] + (1 - p) * est_g["x"]
        torch.testing.assert_close(mean, target, rtol=1e-10, atol=1e-10)


class SpyOracle(QuadraticOracle):
    """The argmin returns a fixed point and records every linear term it is given."""

    def __init__(self, point: torch.Tensor) -> None:
        super().__init__()
        self.point = point
        self.linear: list[torch.Tensor] = []

    def argmin(self, linear, center, theta, seed, *, tolerance=None):
        self.linear.append(linear["x"].clone())
        return Solution(self.wrap(self.point), 0.0, 0, 0.0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_vrcs_correction_is_unbiased_monte_carlo(p):
    """The estimates VRCS forms in its local steps average to ∇h − ∇h1 at the local iterate."""
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(8, generator=gen, dtype=torch.float64)
    x_local = x_t + torch.randn(8, generator=gen, dtype=torch.float64)
    oracle = SpyOracle(x_local)
    method = VRCS(theta=0.5, p=p, q=0.05)
    state = method.init(Weights({"x": x_t}), seed=3, oracle=oracle)
    estimates, f_calls, steps = [], 0, 0
    while len(estimates) < 6000:
        state = replace(state, x=Weights({"x": x_t.clone()}))  # every round starts at the same x_t
        oracle.linear.clear()
        calls_before = dict(oracle.calls)
        state, stats = method.round(state, oracle)
        estimates.extend(oracle.linear[1:])  # [0] is the full-communication extragrad
        steps += int(stats["local_steps"])
        f_calls += oracle.calls["f"] - calls_before["f"] - 1  # minus the full communication
    samples = torch.stack(estimates)
    target = oracle.grad_h(x_local) - oracle.grad_h1(x_local)
    stderr = samples.std(dim=0) / len(samples) ** 0.5
    assert torch.all((samples.mean(dim=0) - target).abs() <= 5 * stderr + 1e-12)
    assert abs(f_calls / steps - p) < 0.03  # group f drawn with probability p


def test_vrcs_solves_least_squares():
    """On heterogeneous least squares, ‖∇h(x_t)‖ falls below 1e-3 of its start."""
    oracle = QuadraticOracle()
    method = VRCS(theta=0.5, p=0.5, q=0.5)
    x0 = torch.zeros(oracle.dim, dtype=torch.float64)
    state = method.init(Weights({"x": x0}), seed=0, oracle=oracle)
    start = oracle.grad_h(x0).norm()
    for _ in range(200):
        state, _ = method.round(state, oracle)
        if oracle.grad_h(state.x["x"]).norm() <= 1e-3 * start:
            break
    assert oracle.grad_h(state.x["x"]).norm() <= 1e-3 * start
    torch.testing.assert_close(state.x["x"], oracle.optimum(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"theta": 0.0, "p": 0.5, "q": 0.5}, "theta=0.0"),
        ({"theta": -1.0, "p": 0.5, "q": 0.5}, "theta=-1.0"),
        ({"theta": 0.1, "p": 1.5, "q": 0.5}, "p=1.5"),
        ({"theta": 0.1, "p": 0.0, "q": 0.5}, "p=0.0"),
        ({"theta": 0.1, "p": 0.5, "q": 0.0}, "q=0.0"),
        ({"theta": 0.1, "p": 0.5, "q": 1.2}, "q=1.2"),
    ],
)
def test_bad_hyperparameters_name_the_value(kwargs, bad):
    with pytest.raises(ConfigError, match=bad.replace(".", r"\.")):
        VRCS(**kwargs)


class SampledClientsOracle(SpyOracle):
    """Group G has K clients of n_i examples with ∇F_i(x) = c_i ∇G_0(x) + s_i (different
    curvatures c_i, offsets s_i) whose example-weighted mean is ∇G; a subset answers with
    fedsweep's sampled (Horvitz–Thompson) weights."""

    def __init__(self, point: torch.Tensor, clients: int = 5) -> None:
        super().__init__(point)
        gen = torch.Generator().manual_seed(7)
        self.members = {}
        for group, loss in (("f", self.f), ("g", self.g)):
            shift = [torch.randn(self.dim, generator=gen, dtype=torch.float64) for _ in range(clients)]
            sizes = np.arange(1, clients + 1) * 3
            scale = np.linspace(0.2, 3.0, clients)
            scale /= scale @ (sizes / sizes.sum())  # example-weighted mean curvature 1
            self.members[group] = (sizes, shift, loss, scale)
        self.subsets: list[tuple[str, tuple[int, ...], int]] = []

    def clients(self, group=None):
        return np.arange(len(self.members[group][0])) if group is not None else np.arange(10)

    def _client_grad(self, group, i, x):
        sizes, shift, loss, scale = self.members[group]
        offset = shift[i] - sum(s * w for s, w in zip(shift, sizes / sizes.sum()))
        return float(scale[i]) * loss.grad(x) + offset  # example-weighted mean over clients: ∇G

    def group_gradients(self, group, points, seed, *, subset=None, snapshot=None):
        from fedsweep.algorithms.aggregation import group_weights, sampled_weights

        self.calls[group] += 1
        sizes = self.members[group][0]
        chosen = np.arange(len(sizes)) if subset is None else subset
        weights = group_weights(sizes) if subset is None else sampled_weights(sizes, subset)
        self.subsets.append((group, tuple(chosen), len(points), snapshot is not None))

        def grad(x):
            return sum(w * self._client_grad(group, int(i), x) for i, w in zip(chosen, weights))

        base = grad(snapshot["x"]) if snapshot is not None else 0.0
        return [self.wrap(grad(p["x"]) - base) for p in points]


def test_vrcs_with_sampled_clients_is_unbiased_monte_carlo():
    """With local_participation, each local step asks a sample S of the group at x and at the
    snapshot (the same S), and the estimates still average to ∇h − ∇h1 at the local iterate."""
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(8, generator=gen, dtype=torch.float64)
    x_local = x_t + torch.randn(8, generator=gen, dtype=torch.float64)
    oracle = SampledClientsOracle(x_local)
    method = VRCS(theta=0.5, p=0.5, q=0.05, local_participation=2)
    state = method.init(Weights({"x": x_t}), seed=5, oracle=oracle)
    estimates = []
    while len(estimates) < 6000:
        state = replace(state, x=Weights({"x": x_t.clone()}))
        oracle.linear.clear()
        state, _ = method.round(state, oracle)
        estimates.extend(oracle.linear[1:])
    local = [s for s in oracle.subsets if len(s[1]) < 5]
    # one point (x) each way: the sampled clients hold x_0 and return Ĝ_S(x) − Ĝ_S(x_0)
    assert local and all(len(chosen) == 2 and points == 1 and diff for _, chosen, points, diff in local)
    samples = torch.stack(estimates)
    target = oracle.grad_h(x_local) - oracle.grad_h1(x_local)
    stderr = samples.std(dim=0) / len(samples) ** 0.5
    assert torch.all((samples.mean(dim=0) - target).abs() <= 5 * stderr + 1e-12)
    assert (samples.std(dim=0) > 0).all()  # the sampling does add noise: the test can fail


class MinibatchOracle(SpyOracle):
    """Least squares with minibatch gradients: each seed draws 5 of a group's 40 rows (at every
    point of the call alike), seed None uses all rows. Not deterministic."""

    deterministic = False

    def __init__(self, point: torch.Tensor) -> None:
        super().__init__(point)
        self.snapshot_seeds: list = []

    @staticmethod
    def _grad(loss, x, seed):
        if seed is None:
            return loss.grad(x)
        rows = torch.randperm(len(loss.b), generator=torch.Generator().manual_seed(seed))[:5]
        A, b = loss.A[rows], loss.b[rows]
        return A.T @ (A @ x - b) / len(rows)

    def group_gradients(self, group, points, seed, *, subset=None, snapshot=None):
        self.calls[group] += 1
        loss = self.f if group == "f" else self.g
        base = self._grad(loss, snapshot["x"], seed) if snapshot is not None else 0.0
        return [self.wrap(self._grad(loss, p["x"], seed) - base) for p in points]

    def full_communication(self, points):
        return {group: self.group_gradients(group, points, None) for group in ("f", "g")}

    def server(self, group, points, seed):
        return [self.wrap(self._grad(self.f1 if group == "f" else self.g1, p["x"], seed)) for p in points]


def test_stochastic_vrcs_has_an_exact_snapshot_and_unbiased_corrections():
    """With minibatches, the round's snapshot difference is exact (every round, to rounding),
    and the local estimates (minibatch corrections at x^k and x_0) average to ∇h − ∇h1."""
    gen = torch.Generator().manual_seed(4)
    x_t = torch.randn(8, generator=gen, dtype=torch.float64)
    x_local = x_t + torch.randn(8, generator=gen, dtype=torch.float64)
    oracle = MinibatchOracle(x_local)
    method = VRCS(theta=0.5, p=0.5, q=0.05)
    state = method.init(Weights({"x": x_t}), seed=6, oracle=oracle)
    exact_snapshot = oracle.grad_h(x_t) - oracle.grad_h1(x_t)
    estimates = []
    while len(estimates) < 6000:
        state = replace(state, x=Weights({"x": x_t.clone()}))
        oracle.linear.clear()
        state, _ = method.round(state, oracle)
        torch.testing.assert_close(oracle.linear[0], exact_snapshot, rtol=1e-12, atol=1e-12)
        estimates.extend(oracle.linear[1:])
    samples = torch.stack(estimates)
    target = oracle.grad_h(x_local) - oracle.grad_h1(x_local)
    stderr = samples.std(dim=0) / len(samples) ** 0.5
    assert (samples.std(dim=0) > 1e-3).all()  # the minibatches do add noise
    assert torch.all((samples.mean(dim=0) - target).abs() <= 5 * stderr + 1e-12)
