"""FedDyn, FedNova and FedOpt: their rounds against hand computations on exact least squares,
FedNova's fix of FedAvg's objective inconsistency, server optimizer states that checkpoint,
the unchanged engines running their programs, and one-line config errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedsweep.algorithms import FedAvg, FedDyn, FedNova, FedOpt, Yogi
from fedsweep.algorithms.feddyn import DynProgram
from fedsweep.algorithms.fednova import NovaProgram
from fedsweep.core.errors import ConfigError
from fedsweep.core.weights import Weights
from fedsweep.experiment import components
from fedsweep.experiment.checkpoint import from_tree, to_tree
from fedsweep.federation.requests import TrainRequest
from fedsweep.federation.virtual_clients import VirtualClients
from tests.quadratic import QuadraticOracle
from tests.test_virtual_clients import (
    CLIENTS, assert_served_as_by_hand, assert_weights_close, by_hand_sgd, controls, federation, model_fn, point, sgd,
)  # fmt: skip
def one_thread():
    """One torch thread (this module's tiny tensors gain nothing from more; on a shared machine
    they contend and slowed a 2 s run to 30 s), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DIM = 8
CONFIGS = Path(__file__).resolve().parents[1] / "fedsweep" / "configs" / "method"
ADAM = {"_target_": "torch.optim.Adam", "lr": 0.1, "betas": [0.9, 0.99], "eps": 1e-3}


def start(seed=0):
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rounds(method, oracle, x0, n):
    state = method.init(Weights({"x": x0}), seed=0, oracle=oracle)
    for _ in range(n):
        state, stats = method.round(state, oracle)
    return state, stats


class Weighted(QuadraticOracle):
    """The quadratic federation with h = ¼ F_f + ¾ F_g."""

    def objective_weights(self):
        return np.array([0.25, 0.75])


def optimum(oracle, pi):
    """argmin Σ_i π_i F_i in closed form."""
    zero = torch.zeros(DIM, dtype=torch.float64)
    H = pi[0] * oracle.f.hessian + pi[1] * oracle.g.hessian
    return torch.linalg.solve(H, -(pi[0] * oracle.f.grad(zero) + pi[1] * oracle.g.grad(zero)))


def local_sgd(loss, x, direction, *, lr, epochs, batch_size=None, momentum=0.0):
    """One client's heavy-ball SGD by hand on consecutive minibatches; its model and step count."""
    w, buf, steps = x.clone(), None, 0
    for _ in range(epochs):
        for part in loss.batches(batch_size):
            d = direction(part, w)
            buf = d if buf is None else momentum * buf + d
            w, steps = w - lr * buf, steps + 1
    return w, steps


# -- FedDyn -------------------------------------------------------------------------------------


@pytest.mark.parametrize("oracle", [QuadraticOracle(), Weighted()], ids=["equal", "weighted"])
def test_feddyn_two_rounds_by_hand(oracle):
    """Local steps on ∇F_i(w) + (α(w − x) − g_i)/w_i (w_i = K π_i, 1 for equal clients: the paper's
    rule), g_i ← g_i − α(y_i − x), h ← h − α·mean_K(y_i − x), x ← mean_S y_i − h/α."""
    x0, alpha = start(), 0.5
    state, stats = rounds(FedDyn(alpha=alpha, local_epochs=3, lr=0.05, batch_size=None), oracle, x0, 2)
    w = 2 * oracle.objective_weights()
    x, h, g = x0.clone(), torch.zeros(DIM, dtype=torch.float64), [torch.zeros(DIM, dtype=torch.float64)] * 2
    for _ in range(2):
        ys = []
        for i, loss in enumerate((oracle.f, oracle.g)):

            def direction(part, y, i=i, x=x, g=g):
                return part.grad(y) + (alpha * (y - x) - g[i]) / w[i]

            ys.append(local_sgd(loss, x, direction, lr=0.05, epochs=3)[0])
        g = [g[i] - alpha * (ys[i] - x) for i in range(2)]
        h = h - alpha * ((ys[0] - x) + (ys[1] - x)) / 2
        x = (ys[0] + ys[1]) / 2 - h / alpha
    torch.testing.assert_close(state.x["x"], x)
    torch.testing.assert_close(state.h["x"], h)
    torch.testing.assert_close(state.grads["x"], torch.stack(g))
    assert stats["norm/h"] == pytest.approx(h.norm().item())


def test_feddyn_converges_to_the_optimum_of_h_where_fedavg_drifts():
    """A fixed point has y_i = x and h = 0, so ∇h(x) = 0 whatever the local steps (here with
    unequal weights in h, which the per-client α_i = α/(K π_i) accounts for)."""
    oracle, x0 = Weighted(), torch.zeros(DIM, dtype=torch.float64)
    best = optimum(oracle, (0.25, 0.75))
    dyn, _ = rounds(FedDyn(alpha=1.0, local_epochs=5, lr=0.05, batch_size=None), oracle, x0, 100)
    avg, _ = rounds(FedAvg(local_epochs=5, lr=0.05, batch_size=None), oracle, x0, 100)
    assert (dyn.x["x"] - best).norm() <= 1e-8 * best.norm()
    assert (avg.x["x"] - best).norm() >= 1e-2 * best.norm()


# -- FedNova ------------------------------------------------------------------------------------


def test_fednova_two_rounds_by_hand_with_unequal_steps_and_momentum():
    """τ = (10, 4) local steps (40 and 16 rows, minibatch 8, 2 epochs), momentum ρ = 0.5: a_i is the
    official code's running sum Σ_t Σ_{k<t} ρ^k, d_i = (x − y_i)/a_i, x ← x − Σ p_i a_i · Σ p_i d_i."""
    oracle, x0, rho = QuadraticOracle(n_g=16), start(), 0.5
    state, stats = rounds(FedNova(local_epochs=2, lr=0.05, batch_size=8, momentum=rho), oracle, x0, 2)
    x = x0.clone()
    for _ in range(2):
        d, a = [], []
        for loss in (oracle.f, oracle.g):
            y, steps = local_sgd(loss, x, lambda part, w: part.grad(w), lr=0.05, epochs=2, batch_size=8, momentum=rho)
            counter = total = 0.0
            for _ in range(steps):  # JYWa/FedNova: local_counter = local_counter·ρ + 1; vec += local_counter
                counter = counter * rho + 1
                total += counter
            d.append((x - y) / total)
            a.append(total)
        tau_eff = (a[0] + a[1]) / 2
        x = x - tau_eff * (d[0] + d[1]) / 2
    assert steps == 4
    torch.testing.assert_close(state.x["x"], x)
    assert stats["tau_eff"] == pytest.approx(tau_eff)


@pytest.mark.parametrize("participation", [None, 1])
def test_fednova_with_equal_steps_and_no_momentum_is_fedavg(participation):
    oracle, x0 = QuadraticOracle(), start()
    nova, _ = rounds(FedNova(local_epochs=3, lr=0.05, batch_size=None, participation=participation), oracle, x0, 2)
    avg, _ = rounds(FedAvg(local_epochs=3, lr=0.05, batch_size=None, participation=participation), oracle, x0, 2)
    torch.testing.assert_close(nova.x["x"], avg.x["x"])


def test_fednova_removes_the_objective_inconsistency_of_fedavg():
    """Clients of 40 and 8 rows at minibatch 8 take τ = (5, 1) steps a round. FedAvg settles at the
    optimum of the surrogate (5 F_f + F_g)/6, far from h's; FedNova settles at h's optimum, up to
    the O(lr) drift of local steps."""
    oracle, x0 = QuadraticOracle(n_g=8), torch.zeros(DIM, dtype=torch.float64)
    best, surrogate = optimum(oracle, (0.5, 0.5)), optimum(oracle, (5 / 6, 1 / 6))

    def history(method):
        state = method.init(Weights({"x": x0}), seed=0, oracle=oracle)
        xs = []
        for _ in range(150):
            state, _ = method.round(state, oracle)
            xs.append(state.x["x"])
        return xs

    avg = history(FedAvg(local_epochs=1, lr=0.05, batch_size=8))
    nova = history(FedNova(local_epochs=1, lr=0.05, batch_size=8))
    assert max((avg[-1] - avg[-30]).norm(), (nova[-1] - nova[-30]).norm()) <= 1e-2  # both have settled
    assert (avg[-1] - surrogate).norm() <= 0.1 * (avg[-1] - best).norm()  # FedAvg: the wrong objective
    assert (nova[-1] - best).norm() <= 0.1 * (avg[-1] - best).norm()  # FedNova: h's optimum


# -- FedOpt -------------------------------------------------------------------------------------


@pytest.mark.parametrize("participation, aggregation", [(None, "self_normalized"), (1, "unbiased")])
def test_fedopt_with_plain_sgd_is_fedavg_exactly(participation, aggregation):
    oracle, x0 = QuadraticOracle(), start()
    kw = {"local_epochs": 3, "lr": 0.05, "batch_size": None, "participation": participation, "aggregation": aggregation}
    sgd_server = {"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.0}
    opt, _ = rounds(FedOpt(server_optimizer=sgd_server, **kw), oracle, x0, 2)
    avg, _ = rounds(FedAvg(**kw), oracle, x0, 2)
    torch.testing.assert_close(opt.x["x"], avg.x["x"], rtol=0, atol=0)


def adam(m, v, t, g):
    m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
    return 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-3), m, v


def adagrad(m, v, t, g):
    v = v + g * g
    return 0.1 * g / (v.sqrt() + 1e-3), m, v


def yogi(m, v, t, g):
    m, v = 0.9 * m + 0.1 * g, v - 0.01 * g * g * torch.sign(v - g * g)
    return 0.01 * m / (v.sqrt() + 1e-3), m, v


def heavy_ball(m, v, t, g):
    m = g if t == 1 else 0.9 * m + g
    return 1.0 * m, m, v


@pytest.mark.parametrize(
    "config, rule",
    [(ADAM, adam), ({"_target_": "torch.optim.Adagrad", "lr": 0.1, "eps": 1e-3}, adagrad),
     ({"_target_": "fedsweep.algorithms.Yogi", "lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-3}, yogi),
     ({"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.9}, heavy_ball)],
    ids=["fedadam", "fedadagrad", "fedyogi", "fedavgm"],
)  # fmt: skip
def test_fedopt_three_rounds_by_hand(config, rule):
    """Δ_t = x − mean_i y_i (FedAvg's local SGD by hand), then the server rule with its memory
    carried from round to round: torch's Adam (bias-corrected), Adagrad, Yogi, heavy ball."""
    oracle, x0 = QuadraticOracle(), start()
    state, stats = rounds(FedOpt(server_optimizer=config, local_epochs=3, lr=0.05, batch_size=None), oracle, x0, 3)
    x, m, v = x0.clone(), torch.zeros(DIM, dtype=torch.float64), torch.zeros(DIM, dtype=torch.float64)
    for t in (1, 2, 3):
        ys = [local_sgd(loss, x, lambda part, w: part.grad(w), lr=0.05, epochs=3)[0] for loss in (oracle.f, oracle.g)]
        delta = x - (ys[0] + ys[1]) / 2
        step, m, v = rule(m, v, t, delta)
        x = x - step
    torch.testing.assert_close(state.x["x"], x)
    assert stats["norm/pseudo_gradient"] == pytest.approx(delta.norm().item())


def test_yogi_by_hand():
    """Two steps of v ← v − (1 − β₂) g² sign(v − g²) on numbers: v grows where g² > v, shrinks where
    g² < v (coordinate 1 at step 2), stays where they are equal (coordinate 2)."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt = Yogi([p], lr=0.1, betas=(0.5, 0.75), eps=0.01, initial_accumulator_value=0.25)
    for g in ([2.0, 1.0, 0.5], [1.0, 0.25, -0.5]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    # step 1: g² = (4, 1, .25), v₀ = .25: sign(v − g²) = (−, −, 0), so
    #         v = .25 + .25·(4, 1, .25)·(1, 1, 0) = (1.25, .5, .25);  m = .5·(2, 1, .5) = (1, .5, .25)
    # step 2: g² = (1, .0625, .25): sign(v − g²) = (+, +, 0), so
    #         v = (1.25 − .25, .5 − .015625, .25) = (1, .484375, .25);  m = .5·(1, .5, .25) + .5·(1, .25, −.5) = (1, .375, −.125)
    v, m = torch.tensor([1.0, 0.484375, 0.25], dtype=torch.float64), torch.tensor([1.0, 0.375, -0.125], dtype=torch.float64)
    v1, m1 = torch.tensor([1.25, 0.5, 0.25], dtype=torch.float64), torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    want = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) - 0.1 * m1 / (v1.sqrt() + 0.01) - 0.1 * m / (v.sqrt() + 0.01)
    torch.testing.assert_close(p, want)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v)
    assert float(opt.state[p]["step"]) == 2


def test_a_fedopt_round_leaves_its_state_untouched():
    """The server optimizer works on a copy of the state's moments: the same state, the same round."""
    oracle = QuadraticOracle()
    method = FedOpt(server_optimizer=ADAM, local_epochs=2, lr=0.05, batch_size=None)
    state, _ = rounds(method, oracle, start(), 2)
    a, _ = method.round(state, oracle)
    b, _ = method.round(state, oracle)
    torch.testing.assert_close(a.x["x"], b.x["x"], rtol=0, atol=0)
    torch.testing.assert_close(a.server["x"]["exp_avg"], b.server["x"]["exp_avg"], rtol=0, atol=0)


# -- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [FedOpt(server_optimizer=ADAM, local_epochs=2, lr=0.05, batch_size=None),
     FedOpt(server_optimizer={"_target_": "torch.optim.Adagrad", "lr": 0.1}, local_epochs=2, lr=0.05, batch_size=None),
     FedDyn(alpha=0.5, local_epochs=2, lr=0.05, batch_size=None, participation=1)],
    ids=["fedadam", "fedadagrad", "feddyn"],
)  # fmt: skip
def test_a_state_survives_a_checkpoint_and_the_next_round_is_identical(method):
    oracle, x0 = QuadraticOracle(), Weights({"x": start()})
    state, _ = rounds(method, oracle, x0["x"], 2)
    buffer = io.BytesIO()
    torch.save(to_tree(state), buffer)  # before the next round: FedDyn's round consumes its state
    buffer.seek(0)
    restored = from_tree(method.init(x0, seed=0, oracle=oracle), torch.load(buffer, weights_only=True))
    a, _ = method.round(state, oracle)
    b, _ = method.round(restored, oracle)
    assert_same_tree(to_tree(a), to_tree(b))  # x, h, g_i, the server optimizer's moments and step counts


def assert_same_tree(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    else:
        assert a == b


@pytest.mark.parametrize("method", ["fedadam", "feddyn"])
def test_a_resumed_run_continues_with_identical_numbers(tmp_path, method):
    """The whole run: the shipped config, a checkpoint at round 2, round 3 resumed = round 3 straight."""
    from fedsweep.experiment.checkpoint import checkpoint_path
    from fedsweep.experiment.config import compose
    from fedsweep.experiment.loop import run_experiment

    base = [f"method={method}", "seed=1", "method.participation=0.5"]
    run_experiment(compose([*base, "rounds=2", "checkpoint.every=2"]), log_dir=tmp_path / "first", progress=False)
    resumed, straight = [], []
    resume = f"checkpoint.resume={checkpoint_path(tmp_path / 'first', 2)}"
    run_experiment(compose([*base, "rounds=3", resume]), log_dir=tmp_path / "resumed", report=resumed.append, progress=False)
    run_experiment(compose([*base, "rounds=3"]), log_dir=tmp_path / "straight", report=straight.append, progress=False)
    assert [m["round"] for m in resumed] == [3.0]
    assert resumed[-1] == pytest.approx(straight[-1], rel=0, abs=0, nan_ok=True)


# -- the engines run the programs unchanged -----------------------------------------------------


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("epochs, batch, momentum", [(2, 3, 0.5), (1, 64, 0.0)])
def test_engines_run_fednova_clients(vectorize, epochs, batch, momentum):
    """Unequal shards (1 to 12 rows: unequal steps, padded under vmap) and the one-step fold: the
    weighted sums of d_i and of the per-client number a_i, as by hand."""
    assert_served_as_by_hand(NovaProgram(epochs=epochs, batch_size=batch, optimizer=sgd(momentum=momentum)), vectorize)


@pytest.mark.parametrize("vectorize", [True, False])
def test_engines_run_feddyn_clients_with_a_number_per_client_as_a_row(vectorize):
    data, x = federation(), point(2)
    rows = controls(CLIENTS, seed=3)
    weight = Weights({"value": torch.tensor([0.5, 1.0, 2.0, 0.7, 1.3])})
    program = DynProgram(epochs=2, batch_size=3, optimizer=sgd(momentum=0.5), alpha=0.4)
    request = TrainRequest(program, x, 9, rows={"g_i": rows, "weight": weight}, row_clients=tuple(int(i) for i in CLIENTS))
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve_each(request, CLIENTS)
    for k, c in enumerate(CLIENTS):
        own = {"g_i": Weights({n: t[k] for n, t in rows.items()}), "weight": Weights({"value": weight["value"][k]})}
        want = by_hand_sgd(data, x, int(c), program, seed=9, rows=own)
        assert_weights_close(Weights({n: t[k] for n, t in got["model"].items()}), want["model"])


def test_every_new_method_runs_on_the_federated_oracle():
    """The real oracle and engines (float32, four clients, vmap blocks, sampled participation)."""
    from tests.least_squares import LeastSquaresFederation

    fed = LeastSquaresFederation()
    for method in (FedDyn(alpha=0.5, local_epochs=2, lr=0.02, batch_size=8),
                   FedNova(local_epochs=2, lr=0.02, batch_size=8, momentum=0.5, participation=0.5),
                   FedOpt(server_optimizer=ADAM, local_epochs=1, lr=0.02, batch_size=None)):  # fmt: skip
        state = method.init(fed.x0(), seed=0, oracle=fed.oracle)
        start_error = fed.error(state.x)
        for _ in range(3):
            state, stats = method.round(state, fed.oracle)
        assert fed.error(state.x) < start_error and all(np.isfinite(v) for v in stats.values())


# -- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["feddyn", "fednova", "fedavgm", "fedadam", "fedadagrad", "fedyogi"])
def test_shipped_configs_build(name):
    node = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    method = components.build("method", node)
    assert components.label(node) == name == method.name


CLIENT = {"local_epochs": 1, "lr": 0.1, "batch_size": 8}
DYN, NOVA = {"_target_": "fedsweep.algorithms.FedDyn", **CLIENT}, {"_target_": "fedsweep.algorithms.FedNova", **CLIENT}
OPT = {"_target_": "fedsweep.algorithms.FedOpt", "_recursive_": False, **CLIENT}
SERVER = "method.server_optimizer"


def server(**node):
    return {**OPT, "server_optimizer": node}


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({**DYN, "alpha": 0}, "method.alpha must be a finite number > 0, got method.alpha=0"),
        (DYN, "missing config key method.alpha"),
        ({**NOVA, "momentum": 1}, "method.momentum must be in [0, 1), got method.momentum=1"),
        ({**NOVA, "aggregation": "unbiased"}, "method.aggregation='unbiased' is not an argument of fedsweep.algorithms.FedNova"),
        (OPT, "missing config key method.server_optimizer"),
        (server(lr=0.1), f"{SERVER} must name a torch.optim optimizer by {SERVER}._target_"),
        (server(_target_="torch.optim.Adamm"), f"{SERVER}._target_='torch.optim.Adamm' cannot be imported"),
        (server(_target_="torch.nn.Linear"), f"{SERVER}._target_='torch.nn.Linear' is outside the allowed packages"),
        (server(_target_="torch.optim.SGD", momentun=0.9),
         f"{SERVER}.momentun=0.9 is not an argument of torch.optim.SGD; known: lr, momentum"),
        (server(_target_="torch.optim.SGD", params=[]), f"{SERVER}.params=[] is set by fedsweep, not in the config"),
        (server(**{**ADAM, "lr": -1}), f"{SERVER}.lr must be a finite number > 0, got {SERVER}.lr=-1"),
        (server(**{**ADAM, "betas": [0.9, 1.0]}), f"{SERVER}.betas must be two numbers in [0, 1), got {SERVER}.betas=[0.9, 1.0]"),
        (server(_target_="fedsweep.algorithms.Yogi", eps=-1), f"{SERVER}.eps must be a finite number >= 0"),
        (server(_target_="torch.optim.SGD", nesterov=True),
         f"{SERVER} (torch.optim.SGD): Nesterov momentum requires a momentum and zero dampening"),
        ({**server(**ADAM), "aggregation": "mean"}, "unknown method.aggregation='mean'"),
    ],
)  # fmt: skip
def test_new_method_hyperparameters_are_validated_in_one_line(cfg, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        components.build("method", cfg)
    assert "\n" not in str(err.value)
