"""Virtual clients: weighted sums of client replies, vectorised = one client at a time = by hand."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsweep.task import Dataset
from fedsweep.federation.client_data import ClientData
from fedsweep.algorithms.aggregation import group_weights, sample_clients, sampled_weights, self_normalized
from fedsweep.task.models import build_model
from fedsweep.federation.batches import epoch_order, minibatches
from fedsweep.federation.runtime.shares import split
from fedsweep.federation.requests import GradRequest, HvpRequest, TrainRequest
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.core.weights import Weights
from fedsweep.algorithms.aggregation import unbiased
from fedsweep.algorithms.fedavg import ProxProgram
from fedsweep.algorithms.programs import ClientProgram, Clients, LocalSGD, Step
from fedsweep.algorithms.scaffold import ScaffoldProgram

SIZES = [5, 1, 12, 3, 9, 2, 7]  # unequal shards, one of a single example


def federation(sizes=SIZES, seed=0) -> ClientData:
    gen = torch.Generator().manual_seed(seed)
    shards = [Dataset(torch.randn(n, 1, 3, 3, generator=gen), torch.randint(0, 4, (n,), generator=gen)) for n in sizes]
    return ClientData.from_groups({"f": shards[:3], "g": shards[3:]})


def model_fn():
    return build_model("mlp", input_shape=(1, 3, 3), num_classes=4, hidden=6, seed=1)


def point(seed=2) -> Weights:
    w = Weights.from_model(model_fn()).clone()
    gen = torch.Generator().manual_seed(seed)
    for t in w.tensors:
        t.add_(0.3 * torch.randn(t.shape, generator=gen))
    return w


def assert_weights_close(a: Weights, b: Weights, rtol=1e-5, atol=1e-6):
    for name in a:
        torch.testing.assert_close(a[name].double(), b[name].double(), rtol=rtol, atol=atol, msg=name)


def by_hand_grad(data: ClientData, x: Weights, client: int, rows=None) -> Weights:
    """∇ (mean loss on the client's rows) with plain autograd: the reference."""
    model = model_fn()
    x.to_model(model)
    shard = data.shard(client)
    xs, ys = (shard.x, shard.y) if rows is None else (torch.from_numpy(data.x[rows]), torch.from_numpy(data.y[rows]))
    F.cross_entropy(model(xs), ys).backward()
    return Weights.from_grads(model)


def by_hand_sgd(data: ClientData, x: Weights, client: int, program, *, seed, rows=None):
    """The client's reply to ``program`` by hand: plain autograd on its minibatches, the direction
    applied by ``torch.optim.SGD`` (momentum, weight decay) and the out-of-momentum part after it."""
    model = model_fn()
    x.to_model(model)
    opt = program.optimizer
    sgd = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                          nesterov=opt.nesterov)
    params = list(model.parameters())
    rows = {k: [t.unsqueeze(0) for t in w.tensors] for k, w in (rows or {}).items()}
    steps = torch.zeros(1)

    def ctx():
        return Clients(x=x.tensors, shared={}, rows=rows, steps=steps.clone())

    state = program.init(ctx(), [p.detach().unsqueeze(0) for p in params])
    n = int(data.sizes[client])
    batch = n if program.batch_size is None else min(n, program.batch_size)
    for epoch in range(program.epochs):
        order = epoch_order(data.starts, np.array([client]), seed, epoch)[0, :n]
        for lo in range(0, n, batch):
            r = order[lo : lo + batch]
            model.zero_grad()
            loss = F.cross_entropy(model(torch.from_numpy(data.x[r])), torch.from_numpy(data.y[r]))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                step = program.step(ctx(), [p.detach().unsqueeze(0) for p in params], [g.unsqueeze(0) for g in grads], state)
                for p, d in zip(params, step.direction):
                    p.grad = d[0].clone()
                sgd.step()
                if step.outside is not None:
                    for p, o in zip(params, step.outside):
                        p -= opt.lr * o[0]
                state = step.state or state
                steps += 1
    reply = program.reply(ctx(), [p.detach().unsqueeze(0) for p in params], state)
    return {k: (Weights({"value": v[0].clone()}) if isinstance(v, torch.Tensor) else Weights(dict(zip(x.names, [t[0].clone() for t in v]))))
            for k, v in reply.items()}  # fmt: skip


def weighted(replies, weights) -> Weights:
    out = Weights.zeros_like(replies[0], dtype=torch.float64)
    for r, w in zip(replies, weights):
        out.axpy_(float(w), r)
    return out


CLIENTS = np.array([0, 2, 3, 4, 6])
WEIGHTS = np.array([0.1, 0.5, 0.2, 0.7, 0.3])


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_gradients_are_the_weighted_sum_of_client_gradients(vectorize, batch_size):
    data = federation()
    clients = VirtualClients(data, model_fn, vectorize=vectorize)
    points = (point(2), point(3))
    got = clients.serve(GradRequest(points, batch_size, seed=11), CLIENTS, WEIGHTS)
    sel = minibatches(data.starts, CLIENTS, batch_size, 11)
    for k, x in enumerate(points):
        replies = [by_hand_grad(data, x, c, rows=sel.rows[sel.owner == i]) for i, c in enumerate(CLIENTS)]
        assert got[str(k)].dtype == torch.float64
        assert_weights_close(got[str(k)], weighted(replies, WEIGHTS))


def test_minibatches_do_not_depend_on_the_other_clients_of_a_request():
    data = federation(sizes=[40, 3, 25, 17])
    together = minibatches(data.starts, np.array([0, 1, 2, 3]), 8, seed=5)
    for i, c in enumerate([0, 1, 2, 3]):
        alone = minibatches(data.starts, np.array([c]), 8, seed=5)
        np.testing.assert_array_equal(alone.rows, together.rows[together.owner == i])
        assert len(alone.rows) == min(8, data.sizes[c]) and len(set(alone.rows)) == len(alone.rows)
        lo, hi = data.starts[c], data.starts[c + 1]
        assert ((alone.rows >= lo) & (alone.rows < hi)).all()
    other_seed = minibatches(data.starts, np.array([0]), 8, seed=6)
    assert not np.array_equal(other_seed.rows, minibatches(data.starts, np.array([0]), 8, seed=5).rows)


@pytest.mark.parametrize("vectorize", [True, False])
def test_hvp_is_the_weighted_sum_of_client_hvps(vectorize):
    data = federation()
    x, v = point(2), point(4)
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(HvpRequest(x, v, None, None), CLIENTS, WEIGHTS)["hvp"]
    replies = []
    for c in CLIENTS:  # by hand: the Hessian of the shard's mean loss, times v
        model = model_fn()
        x.to_model(model)
        params = Weights.from_model(model)
        shard = data.shard(int(c))
        g = torch.autograd.grad(F.cross_entropy(model(shard.x), shard.y), params.tensors, create_graph=True)
        gv = sum((gi * vi).sum() for gi, vi in zip(g, v.tensors))
        replies.append(Weights(dict(zip(params.names, torch.autograd.grad(gv, params.tensors)))))
    assert_weights_close(got, weighted(replies, WEIGHTS))


def sgd(**kwargs) -> LocalSGD:
    return LocalSGD(**{"lr": 0.3, **kwargs})


def assert_replies_close(got, want, rtol=1e-5, atol=1e-6):
    assert set(got) == set(want)
    for name in want:
        assert_weights_close(got[name], want[name], rtol=rtol, atol=atol)


def weighted_replies(replies, weights):
    return {name: weighted([r[name] for r in replies], weights) for name in replies[0]}


def assert_served_as_by_hand(program, vectorize: bool) -> None:
    """The engine's weighted sums of the clients' replies equal local training by hand, client by client."""
    data, x = federation(), point(2)
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(TrainRequest(program, x, 9), CLIENTS, WEIGHTS)
    replies = [by_hand_sgd(data, x, int(c), program, seed=9) for c in CLIENTS]
    assert_replies_close(got, weighted_replies(replies, WEIGHTS))


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize(
    "epochs, batch, optimizer",
    [(1, 4, sgd()), (2, 3, sgd()), (1, 64, sgd()), (3, None, sgd()), (2, 3, sgd(momentum=0.9, weight_decay=0.01)),
     (1, 64, sgd(momentum=0.5, nesterov=True))],
)  # fmt: skip
def test_local_training_is_the_weighted_sum_of_client_models(vectorize, epochs, batch, optimizer):
    """Mixed shards: some clients take one step (folded into one union gradient when vectorised),
    others several under vmap with padding; momentum and weight decay as torch.optim.SGD's."""
    assert_served_as_by_hand(ProxProgram(epochs=epochs, batch_size=batch, optimizer=optimizer), vectorize)


@pytest.mark.parametrize("vectorize", [True, False])
def test_fedprox_local_training_adds_the_proximal_gradient(vectorize):
    assert_served_as_by_hand(ProxProgram(epochs=2, batch_size=3, optimizer=sgd(momentum=0.9), mu=0.7), vectorize)


def controls(clients, seed=5) -> Weights:
    gen = torch.Generator().manual_seed(seed)
    return Weights({n: 0.5 * torch.randn(len(clients), *t.shape, generator=gen) for n, t in point(2).items()})


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("epochs, batch, momentum", [(1, 4, 0.0), (2, 3, 0.9), (1, 64, 0.0)])
def test_scaffold_clients_correct_by_their_own_row_and_return_their_mean_gradient(vectorize, epochs, batch, momentum):
    """Per-client rows looked up by client id (one client unlisted: zeros), a shared vector, the
    correction kept out of the momentum buffer, for every engine: the one-step fold (batch 64),
    vmap blocks and the loop."""
    data, x = federation(), point(2)
    listed = CLIENTS[:-1][::-1]  # any order; CLIENTS[-1] has no row
    rows, c = controls(listed), controls([0], seed=8)
    c = Weights({n: t[0] for n, t in c.items()})
    program = ScaffoldProgram(epochs=epochs, batch_size=batch, optimizer=sgd(momentum=momentum))
    request = TrainRequest(program, x, 9, shared={"c": c}, rows={"c_i": rows}, row_clients=tuple(int(i) for i in listed))
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(request, CLIENTS, WEIGHTS)
    replies = []
    for i in CLIENTS:
        row = {n: t[list(listed).index(i)] for n, t in rows.items()} if i in listed else {n: 0 * t for n, t in c.items()}
        replies.append(by_hand_sgd(data, x, int(i), ScaffoldByHand(program, c), seed=9, rows={"c_i": Weights(row)}))
    assert_replies_close(got, weighted_replies(replies, WEIGHTS))
    assert request.nbytes == 2 * x.numel * 4  # x and c in; the client holds c_i


@dataclass(frozen=True)
class ScaffoldByHand(ScaffoldProgram):
    """The same program with the shared c carried inside (``by_hand_sgd`` passes no shared vectors)."""

    c: Weights | None = None

    def __init__(self, program: ScaffoldProgram, c: Weights) -> None:
        object.__setattr__(self, "epochs", program.epochs)
        object.__setattr__(self, "batch_size", program.batch_size)
        object.__setattr__(self, "optimizer", program.optimizer)
        object.__setattr__(self, "affine", program.affine)
        object.__setattr__(self, "c", c)

    def step(self, clients, params, grads, state):
        return super().step(Clients(clients.x, {"c": self.c.tensors}, clients.rows, clients.steps), params, grads, state)


@dataclass(frozen=True)
class LinearTermProgram(ClientProgram):
    """A plug-in rule no engine knows: FedDyn-like direction ∇F_i(w) − r_i + α(w − x), replying with
    the model and a number per client (its steps, scaled): any program runs on every engine."""

    alpha: float = 0.0

    def step(self, clients, params, grads, state):
        return Step(direction=[g - r + self.alpha * (w - x) for g, r, w, x in zip(grads, clients.rows["r"], params, clients.x)])

    def reply(self, clients, params, state):
        return {"model": params, "work": 2.0 * clients.steps}


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("batch", [3, 64])
def test_a_new_local_rule_runs_on_every_engine_unchanged(vectorize, batch):
    data, x = federation(), point(2)
    rows = controls(CLIENTS, seed=3)
    program = LinearTermProgram(epochs=2 if batch == 3 else 1, batch_size=batch, optimizer=sgd(momentum=0.5), alpha=0.4)
    request = TrainRequest(program, x, 9, rows={"r": rows}, row_clients=tuple(int(i) for i in CLIENTS))
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(request, CLIENTS, WEIGHTS)
    replies = [by_hand_sgd(data, x, int(c), program, seed=9, rows={"r": Weights({n: t[k] for n, t in rows.items()})})
               for k, c in enumerate(CLIENTS)]  # fmt: skip
    assert_replies_close(got, weighted_replies(replies, WEIGHTS))
    each = VirtualClients(data, model_fn, vectorize=vectorize).serve_each(request, CLIENTS)
    for k in range(len(CLIENTS)):
        assert_weights_close(Weights({n: t[k] for n, t in each["model"].items()}), replies[k]["model"])
        assert float(each["work"]["value"][k]) == float(replies[k]["work"]["value"])


@pytest.mark.parametrize("vectorize", [True, False])
def test_each_client_gets_its_own_reply(vectorize):
    """serve_each: every client's model and mean gradient, in order, as by hand (vmap blocks or the loop)."""
    data, x = federation(), point(2)
    rows = controls(CLIENTS)
    c = Weights({n: 0 * t for n, t in x.items()})
    program = ScaffoldProgram(epochs=2, batch_size=4, optimizer=sgd())
    request = TrainRequest(program, x, 9, shared={"c": c}, rows={"c_i": rows}, row_clients=tuple(int(i) for i in CLIENTS))
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve_each(request, CLIENTS)
    for k, i in enumerate(CLIENTS):
        row = Weights({n: t[k] for n, t in rows.items()})
        want = by_hand_sgd(data, x, int(i), ScaffoldByHand(program, c), seed=9, rows={"c_i": row})
        for name in ("model", "control"):
            assert_weights_close(Weights({n: t[k] for n, t in got[name].items()}), want[name])


def test_a_block_of_many_clients_trains_like_one_client_at_a_time():
    """A thousand clients in one request: the vectorised engine matches the loop engine."""
    sizes = np.random.default_rng(0).integers(1, 6, size=1000).tolist()
    data = federation(sizes=sizes)
    clients = np.arange(1000)
    weights = group_weights(data.sizes)
    program = ProxProgram(epochs=2, batch_size=2, optimizer=LocalSGD(lr=0.2, momentum=0.9))
    request = TrainRequest(program, point(2), 4)
    fast = VirtualClients(data, model_fn, vectorize=True).serve(request, clients, weights)["model"]
    slow = VirtualClients(data, model_fn, vectorize=False).serve(request, clients, weights)["model"]
    assert_weights_close(fast, slow, rtol=1e-6, atol=1e-7)


def test_batchnorm_models_are_served_one_client_at_a_time():
    def cnn():  # a user's model may still use BatchNorm when driven directly
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(18, 4)
        )

    assert not VirtualClients(federation(), cnn).vectorized
    assert VirtualClients(federation(), model_fn).vectorized


def test_sampled_weights_are_unbiased_over_every_sample():
    """Averaged over all C(K, m) equally likely samples, Σ_{i∈S} w_i r_i = Σ_i (n_i/N) r_i."""
    sizes = np.array([5, 1, 12, 3, 9])
    replies = np.random.default_rng(0).normal(size=(5, 3))
    exact = group_weights(sizes) @ replies
    for m in (1, 2, 4):
        samples = [np.array(s) for s in itertools.combinations(range(5), m)]
        mean = np.mean([sampled_weights(sizes, s) @ replies[s] for s in samples], axis=0)
        np.testing.assert_allclose(mean, exact, rtol=1e-12)


def test_self_normalized_weights_average_the_sampled_models():
    pi = np.array([5, 1, 12, 3]) / 21
    w = self_normalized(pi, np.array([0, 2]))
    np.testing.assert_allclose(w, [5 / 17, 12 / 17])
    np.testing.assert_allclose(self_normalized(pi, np.arange(4)), pi)


def test_unbiased_weights_average_the_full_update_over_every_sample():
    """Over all C(K, M) samples, Σ_{i∈S} (K/M) π_i u_i averages to Σ_i π_i u_i."""
    pi = np.array([5, 1, 12, 3, 9]) / 30
    updates = np.random.default_rng(1).normal(size=(5, 3))
    for m in (1, 2, 4):
        samples = [np.array(s) for s in itertools.combinations(range(5), m)]
        mean = np.mean([unbiased(pi, s) @ updates[s] for s in samples], axis=0)
        np.testing.assert_allclose(mean, pi @ updates, rtol=1e-12)


def test_sample_clients_fraction_count_and_everyone():
    rng = np.random.default_rng(0)
    assert sample_clients(rng, 10, None) is None and sample_clients(rng, 10, 1.0) is None
    assert sample_clients(rng, 10, 10) is None and sample_clients(rng, 10, 25) is None
    s = sample_clients(rng, 10, 0.3)
    assert len(s) == 3 and np.all(np.diff(s) > 0) and s.max() < 10
    assert len(sample_clients(rng, 10, 4)) == 4
    assert len(sample_clients(rng, 10, 0.01)) == 1  # at least one client
    counts = np.bincount(np.concatenate([sample_clients(rng, 10, 2) for _ in range(5000)]), minlength=10)
    assert counts.min() > 0.8 * 1000 and counts.max() < 1.2 * 1000  # uniform: 5000 · 2/10 each


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 20])
def test_split_covers_the_clients_in_balanced_contiguous_shares(parts):
    sizes = np.array(SIZES * 3)
    shares = split(sizes, parts)
    assert 1 <= len(shares) <= parts
    assert shares[0].start == 0 and shares[-1].stop == len(sizes)
    assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
    if parts <= len(sizes):
        assert max(sizes[s].sum() for s in shares) <= sizes.sum() / parts + sizes.max()


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_snapshot_request_returns_the_change_since_the_snapshot(vectorize):
    """With a snapshot, a client replies ∇F_i(x) − ∇F_i(x_0) on one minibatch: one vector."""
    data = federation()
    clients = VirtualClients(data, model_fn, vectorize=vectorize)
    x, x0 = point(2), point(5)
    change = clients.serve(GradRequest((x,), 4, 11, snapshot=x0), CLIENTS, WEIGHTS)["0"]
    both = clients.serve(GradRequest((x, x0), 4, 11), CLIENTS, WEIGHTS)
    assert_weights_close(change, both["0"].sub_(both["1"]))


def test_a_local_step_with_a_snapshot_counts_one_vector_each_way():
    """The logical federation: the clients hold x_0, so a request sends x and receives one vector."""
    from fedsweep.federation.oracle import FederatedOracle
    from fedsweep.federation.runtime.local import LocalRuntime

    data = federation()
    runtime = LocalRuntime(device="cpu")
    runtime.attach(data, model_fn)
    oracle = FederatedOracle(runtime, data, server=None, group_weights={"f": 0.5, "g": 0.5}, batch_size=4,
                             deterministic=False, device=torch.device("cpu"))  # fmt: skip
    x, x0 = point(2), point(5)
    oracle.group_gradients("f", [x], 3, snapshot=x0)
    nbytes = x.numel * 4
    assert oracle.comm.as_metrics()["comm/bytes_sent"] == 3 * nbytes  # three clients in group f
    assert oracle.comm.as_metrics()["comm/bytes_received"] == 3 * nbytes
    assert oracle.comm.messages == 3
