"""Each method's update against a hand computation; convergence ordering on least squares."""

from __future__ import annotations

import re

import pytest
import torch

from fedsweep.core.errors import ConfigError
from fedsweep.experiment import components
from fedsweep.algorithms import FedAvg, ServerOnly, Sliding, VRCS
from fedsweep.core.weights import Weights
from tests.quadratic import QuadraticOracle

DIM = 8


def start(seed=0):
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_argmin(oracle, v, c, theta):
    """Solve v + (x − c)/θ + ∇h1(x) = 0 by hand: (H1 + I/θ) x = c/θ − v − ∇h1(0)."""
    H1 = (oracle.f1.hessian + oracle.g1.hessian) / 2
    b1 = oracle.grad_h1(torch.zeros(DIM, dtype=torch.float64))
    return torch.linalg.solve(H1 + torch.eye(DIM, dtype=torch.float64) / theta, c / theta - v - b1)


def test_sliding_one_round_by_hand():
    oracle, x0 = QuadraticOracle(), start()
    method = Sliding(theta=0.3)
    state, _ = method.round(method.init(Weights({"x": x0}), seed=0, oracle=oracle), oracle)
    e = oracle.grad_h(x0) - oracle.grad_h1(x0)
    torch.testing.assert_close(state.x["x"], exact_argmin(oracle, e, x0, 0.3))
    assert oracle.calls == {"f": 1, "g": 1}


def test_server_only_one_round_by_hand():
    oracle, x0 = QuadraticOracle(), start()
    method = ServerOnly(theta=0.3)
    state, _ = method.round(method.init(Weights({"x": x0}), seed=0, oracle=oracle), oracle)
    torch.testing.assert_close(state.x["x"], exact_argmin(oracle, torch.zeros(DIM, dtype=torch.float64), x0, 0.3))
    assert oracle.calls == {"f": 0, "g": 0}


def test_fedavg_one_round_by_hand():
    oracle, x0 = QuadraticOracle(), start()
    method = FedAvg(local_epochs=3, lr=0.05, batch_size=None)
    state, _ = method.round(method.init(Weights({"x": x0}), seed=0, oracle=oracle), oracle)
    expected = []
    for loss in (oracle.f, oracle.g):
        w = x0.clone()
        for _ in range(3):
            w = w - 0.05 * (loss.A.T @ (loss.A @ w - loss.b) / len(loss.b))
        expected.append(w)
    torch.testing.assert_close(state.x["x"], (expected[0] + expected[1]) / 2)
    assert oracle.calls == {"f": 1, "g": 1}


def test_fedprox_one_round_by_hand():
    """Each local step adds μ(w − x_t) to the gradient; μ = 0 is FedAvg."""
    from fedsweep.algorithms import FedProx

    oracle, x0 = QuadraticOracle(), start()
    method = FedProx(mu=2.0, local_epochs=3, lr=0.05, batch_size=None)
    state, _ = method.round(method.init(Weights({"x": x0}), seed=0, oracle=oracle), oracle)
    expected = []
    for loss in (oracle.f, oracle.g):
        w = x0.clone()
        for _ in range(3):
            w = w - 0.05 * (loss.A.T @ (loss.A @ w - loss.b) / len(loss.b) + 2.0 * (w - x0))
        expected.append(w)
    torch.testing.assert_close(state.x["x"], (expected[0] + expected[1]) / 2)
    plain = FedAvg(local_epochs=3, lr=0.05, batch_size=None)
    zero = FedProx(mu=0.0, local_epochs=3, lr=0.05, batch_size=None)
    a, _ = plain.round(plain.init(Weights({"x": x0}), seed=0, oracle=oracle), QuadraticOracle())
    b, _ = zero.round(zero.init(Weights({"x": x0}), seed=0, oracle=oracle), QuadraticOracle())
    torch.testing.assert_close(a.x["x"], b.x["x"], rtol=0, atol=0)


def test_scaffold_two_rounds_by_hand():
    """Round 1 (c = c_i = 0) is a FedAvg round; round 2 corrects every local step by c − c_i,
    with c_i the client's mean gradient of round 1 and c their mean, then x moves by η_g."""
    from fedsweep.algorithms import Scaffold

    oracle, x0 = QuadraticOracle(), start()
    method = Scaffold(local_epochs=3, lr=0.05, batch_size=None, global_lr=0.7)
    state = method.init(Weights({"x": x0}), seed=0, oracle=oracle)
    for _ in range(2):
        state, stats = method.round(state, oracle)
    x = x0.clone()
    c, controls = torch.zeros(DIM, dtype=torch.float64), {"f": torch.zeros(DIM, dtype=torch.float64)}
    controls["g"] = controls["f"].clone()
    for _ in range(2):
        models, means = {}, {}
        for group, loss in (("f", oracle.f), ("g", oracle.g)):
            w, grads = x.clone(), []
            for _ in range(3):
                grads.append(loss.grad(w))
                w = w - 0.05 * (grads[-1] + c - controls[group])
            models[group], means[group] = w, sum(grads) / 3
        x = x + 0.7 * ((models["f"] - x) + (models["g"] - x)) / 2
        c = c + ((means["f"] - controls["f"]) + (means["g"] - controls["g"])) / 2
        controls = means
    torch.testing.assert_close(state.x["x"], x)
    torch.testing.assert_close(state.c["x"], c)
    torch.testing.assert_close(state.controls["x"][1], controls["g"])
    assert oracle.calls == {"f": 2, "g": 2} and stats["norm/control"] == pytest.approx(c.norm().item())


def test_scaffold_first_round_is_fedavg():
    from fedsweep.algorithms import Scaffold

    x0 = start()
    plain = FedAvg(local_epochs=3, lr=0.05, batch_size=None)
    scaffold = Scaffold(local_epochs=3, lr=0.05, batch_size=None)
    oracle = QuadraticOracle()
    a, _ = plain.round(plain.init(Weights({"x": x0}), seed=0, oracle=oracle), QuadraticOracle())
    b, _ = scaffold.round(scaffold.init(Weights({"x": x0}), seed=0, oracle=oracle), QuadraticOracle())
    torch.testing.assert_close(a.x["x"], b.x["x"])


class RecordingOracle(QuadraticOracle):
    """Records which group each local step contacted (the method's own draws)."""

    def __init__(self) -> None:
        super().__init__()
        self.contacted: list[str] = []

    def group_gradients(self, group, points, seed, *, subset=None, snapshot=None):
        self.contacted.append(group)
        return super().group_gradients(group, points, seed, subset=subset, snapshot=snapshot)


def test_vrcs_one_round_by_hand():
    """Every step of a round computed by hand, along the groups the method drew."""
    oracle, x_t = RecordingOracle(), start()
    theta, p, q = 0.4, 0.3, 0.2
    method = VRCS(theta=theta, p=p, q=q)
    for seed in range(20):  # a seed whose round has local steps with both groups
        oracle.contacted.clear()
        state, stats = method.round(method.init(Weights({"x": x_t}), seed=seed, oracle=oracle), oracle)
        if {"f", "g"} <= set(oracle.contacted[2:]):
            break
    d = {"f": lambda x: oracle.f.grad(x) - oracle.f1.grad(x), "g": lambda x: oracle.g.grad(x) - oracle.g1.grad(x)}
    e = (d["f"](x_t) + d["g"](x_t)) / 2
    x = exact_argmin(oracle, e, x_t, theta)
    for group in oracle.contacted[2:]:  # [0], [1]: the full communication
        w = 1 / (2 * p) if group == "f" else 1 / (2 * (1 - p))
        x = exact_argmin(oracle, e + w * (d[group](x) - d[group](x_t)), x, theta)
    assert stats["local_steps"] == len(oracle.contacted) - 2
    torch.testing.assert_close(state.x["x"], x)


def test_a_round_draws_the_same_for_the_same_state():
    """States are values: a round's draws depend on (seed, round) only, so the same state gives
    the same round, whatever ran before."""
    oracle, x_t = QuadraticOracle(), start()
    method = VRCS(theta=0.4, p=0.3, q=0.2)
    state = method.init(Weights({"x": x_t}), seed=3, oracle=oracle)
    a, _ = method.round(state, oracle)
    method.round(a, oracle)
    b, _ = method.round(state, oracle)
    torch.testing.assert_close(a.x["x"], b.x["x"], rtol=0, atol=0)
    assert (a.round, b.round) == (1, 1)


def grad_norm_after(method, oracle, rounds):
    state = method.init(Weights({"x": torch.zeros(DIM, dtype=torch.float64)}), seed=0, oracle=oracle)
    norms = []
    for _ in range(rounds):
        state, _ = method.round(state, oracle)
        norms.append(oracle.grad_h(state.x["x"]).norm().item())
    return norms


def test_vrcs_and_sliding_beat_fedavg_client_drift():
    """Heterogeneous least squares: VRCS and sliding reach ‖∇h‖ ≤ 1e-3·start; FedAvg stalls higher."""
    oracle = QuadraticOracle()
    g0 = oracle.grad_h(torch.zeros(DIM, dtype=torch.float64)).norm().item()
    vrcs = min(grad_norm_after(VRCS(theta=0.5, p=0.5, q=0.5), oracle, 150))
    sliding = min(grad_norm_after(Sliding(theta=0.5), oracle, 150))
    fedavg_norms = grad_norm_after(FedAvg(local_epochs=5, lr=0.05, batch_size=None), oracle, 600)
    assert vrcs <= 1e-3 * g0
    assert sliding <= 1e-3 * g0
    # FedAvg has converged to its own fixed point (no further progress) ...
    assert abs(fedavg_norms[-1] - fedavg_norms[-50]) <= 1e-6 * g0
    # ... whose gradient floor is far above what the sliding methods reach
    assert fedavg_norms[-1] > 1e-2 * g0 > max(vrcs, sliding)


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"_target_": "fedsweep.algorithms.Sliding", "theta": -1}, "method.theta=-1"),
        ({"_target_": "fedsweep.algorithms.ServerOnly", "theta": 0}, "method.theta=0"),
        ({"_target_": "fedsweep.algorithms.Sliding", "theta": "big"}, "method.theta must be a number, got method.theta='big'"),
        ({"_target_": "fedsweep.algorithms.FedAvg", "local_epochs": 0, "lr": 0.1, "batch_size": None}, "local_epochs=0"),
        ({"_target_": "fedsweep.algorithms.FedAvg", "local_epochs": 1, "lr": -0.1, "batch_size": None}, "lr=-0.1"),
        ({"_target_": "fedsweep.algorithms.FedAvg", "local_epochs": 1, "lr": 0.1, "batch_size": 0}, "batch_size=0"),
        ({"_target_": "fedsweep.algorithms.FedAvg", "local_epochs": 1, "lr": 0.1}, "missing config key method.batch_size"),
        ({"_target_": "fedsweep.algorithms.FedAvg", "local_epochs": 1, "lr": 0.1, "batch_size": 1, "mu": 1},
         "method.mu=1 is not an argument of fedsweep.algorithms.FedAvg"),
        ({"_target_": "fedsweep.algorithms.Scaffold", "local_epochs": 1, "lr": 0.1, "batch_size": 8, "global_lr": 0},
         "method.global_lr must be a finite number > 0, got method.global_lr=0"),
        ({"_target_": "fedsweep.algorithms.Adam"}, "'fedsweep.algorithms.Adam' cannot be imported"),
        ({"theta": 0.1}, "method._target_"),
    ],
)
def test_method_hyperparameters_are_validated(cfg, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        components.build("method", cfg)
