"""Virtual clients: weighted sums of client replies, vectorised = one client at a time = by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsweep.task import Dataset
from fedsweep.federation.client_data import ClientData
from fedsweep.algorithms.aggregation import group_weights, participation_weights, sample_clients, sampled_weights
from fedsweep.task.models import build_model
from fedsweep.federation.batches import epoch_order, minibatches
from fedsweep.federation.runtime.ray_runtime import split
from fedsweep.federation.requests import GradRequest, HvpRequest, TrainRequest
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.core.weights import Weights

SIZES = [5, 1, 12, 3, 9, 2, 7]  # unequal shards, one of a single example


def federation(sizes=SIZES, seed=0) -> ClientData:
    gen = torch.Generator().manual_seed(seed)
    shards = [Dataset(torch.randn(n, 1, 3, 3, generator=gen), torch.randint(0, 4, (n,), generator=gen)) for n in sizes]
    return ClientData.from_shards(shards[:3], shards[3:])


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


def by_hand_sgd(data: ClientData, x: Weights, client: int, *, epochs, lr, batch, seed, prox=0.0, drift=None, mean=False):
    """The client's model after local SGD (with ``mean``: and its mean data gradient)."""
    model = model_fn()
    x.to_model(model)
    start = [t.clone() for t in x.tensors]
    drift = drift.tensors if drift is not None else [torch.zeros_like(t) for t in start]
    total, steps = [torch.zeros_like(t) for t in start], 0
    for epoch in range(epochs):
        n = data.sizes[client]
        order = epoch_order(data.starts, np.array([client]), seed, epoch)[0, :n]
        for lo in range(0, n, batch):
            rows = order[lo : lo + batch]
            model.zero_grad()
            F.cross_entropy(model(torch.from_numpy(data.x[rows])), torch.from_numpy(data.y[rows])).backward()
            steps += 1
            with torch.no_grad():
                for p, p0, d, t in zip(model.parameters(), start, drift, total):
                    t += p.grad
                    p -= lr * (p.grad + prox * (p - p0) + d)
    model_weights = Weights.from_model(model).clone()
    return (model_weights, Weights(dict(zip(x.names, [t / steps for t in total])))) if mean else model_weights


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
        assert got[k].dtype == torch.float64
        assert_weights_close(got[k], weighted(replies, WEIGHTS))


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
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(HvpRequest(x, v, None, None), CLIENTS, WEIGHTS)[0]
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


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("epochs, batch", [(1, 4), (2, 3), (1, 64), (3, None)])
def test_local_training_is_the_weighted_sum_of_client_models(vectorize, epochs, batch):
    """Mixed shards: some clients take one step (folded into one union gradient when
    vectorised), others several under vmap with padding."""
    data = federation()
    x = point(2)
    request = TrainRequest(x, epochs=epochs, lr=0.3, batch_size=batch, seed=9)
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(request, CLIENTS, WEIGHTS)[0]
    replies = [
        by_hand_sgd(data, x, int(c), epochs=epochs, lr=0.3, batch=batch or int(data.sizes[c]), seed=9) for c in CLIENTS
    ]
    assert_weights_close(got, weighted(replies, WEIGHTS))


@pytest.mark.parametrize("vectorize", [True, False])
def test_fedprox_local_training_adds_the_proximal_gradient(vectorize):
    data = federation()
    x = point(2)
    request = TrainRequest(x, epochs=2, lr=0.3, batch_size=3, seed=9, prox=0.7)
    got = VirtualClients(data, model_fn, vectorize=vectorize).serve(request, CLIENTS, WEIGHTS)[0]
    replies = [by_hand_sgd(data, x, int(c), epochs=2, lr=0.3, batch=3, seed=9, prox=0.7) for c in CLIENTS]
    assert_weights_close(got, weighted(replies, WEIGHTS))


def drifts(clients, seed=5) -> Weights:
    gen = torch.Generator().manual_seed(seed)
    return Weights({n: 0.5 * torch.randn(len(clients), *t.shape, generator=gen) for n, t in point(2).items()})


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("epochs, batch", [(1, 4), (2, 3), (1, 64)])
def test_scaffold_local_training_adds_each_clients_drift_and_returns_its_mean_gradient(vectorize, epochs, batch):
    """Per-client drift rows, looked up by client id (one client unlisted: no drift), for
    every engine: the one-step fold (batch 64), vmap blocks and the loop."""
    data = federation()
    x = point(2)
    listed = CLIENTS[:-1][::-1]  # any order; CLIENTS[-1] has no row
    d = drifts(listed)
    request = TrainRequest(x, epochs=epochs, lr=0.3, batch_size=batch, seed=9, prox=0.2, drift=d,
                           drift_clients=tuple(int(c) for c in listed))  # fmt: skip
    models, means = VirtualClients(data, model_fn, vectorize=vectorize).serve(request, CLIENTS, WEIGHTS)
    replies = []
    for c in CLIENTS:
        row = Weights({n: t[list(listed).index(c)] for n, t in d.items()}) if c in listed else None
        replies.append(by_hand_sgd(data, x, int(c), epochs=epochs, lr=0.3, batch=batch, seed=9, prox=0.2, drift=row, mean=True))
    assert_weights_close(models, weighted([m for m, _ in replies], WEIGHTS))
    assert_weights_close(means, weighted([g for _, g in replies], WEIGHTS))
    assert request.nbytes == 2 * TrainRequest(x, epochs, 0.3, batch, 9).nbytes  # x and c in, y_i and c_i⁺ out


@pytest.mark.parametrize("vectorize", [True, False])
def test_each_client_gets_its_own_reply(vectorize):
    """serve_each: every client's model and mean gradient, in order, as by hand (vmap blocks or the loop)."""
    data = federation()
    x = point(2)
    d = drifts(CLIENTS)
    request = TrainRequest(x, epochs=2, lr=0.3, batch_size=4, seed=9, drift=d, drift_clients=tuple(int(c) for c in CLIENTS))
    models, means = VirtualClients(data, model_fn, vectorize=vectorize).serve_each(request, CLIENTS)
    for i, c in enumerate(CLIENTS):
        row = Weights({n: t[i] for n, t in d.items()})
        model, mean = by_hand_sgd(data, x, int(c), epochs=2, lr=0.3, batch=4, seed=9, drift=row, mean=True)
        assert_weights_close(Weights({n: t[i] for n, t in models.items()}), model)
        assert_weights_close(Weights({n: t[i] for n, t in means.items()}), mean)


def test_a_block_of_many_clients_trains_like_one_client_at_a_time():
    """A thousand clients in one request: the vectorised engine matches the loop engine."""
    sizes = np.random.default_rng(0).integers(1, 6, size=1000).tolist()
    data = federation(sizes=sizes)
    clients = np.arange(1000)
    weights = group_weights(data.sizes)
    request = TrainRequest(point(2), epochs=2, lr=0.2, batch_size=2, seed=4)
    fast = VirtualClients(data, model_fn, vectorize=True).serve(request, clients, weights)[0]
    slow = VirtualClients(data, model_fn, vectorize=False).serve(request, clients, weights)[0]
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


def test_participation_weights_average_the_sampled_models():
    sizes = np.array([5, 1, 12, 3])
    w = participation_weights(sizes, np.array([0, 2]))
    np.testing.assert_allclose(w, [5 / 17, 12 / 17])
    np.testing.assert_allclose(participation_weights(sizes, np.arange(4)), group_weights(sizes))


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
    (change,) = clients.serve(GradRequest((x,), 4, 11, snapshot=x0), CLIENTS, WEIGHTS)
    at_x, at_x0 = clients.serve(GradRequest((x, x0), 4, 11), CLIENTS, WEIGHTS)
    assert_weights_close(change, at_x.sub_(at_x0))


def test_a_local_step_with_a_snapshot_counts_one_vector_each_way():
    """The logical federation: the clients hold x_0, so a request sends x and receives one vector."""
    from fedsweep.federation.oracle import FederatedOracle
    from fedsweep.federation.runtime.local import LocalRuntime

    data = federation()
    runtime = LocalRuntime(device="cpu")
    runtime.attach(data, model_fn, vectorize="auto")
    oracle = FederatedOracle(runtime, data, server=None, batch_size=4, deterministic=False, device=torch.device("cpu"))
    x, x0 = point(2), point(5)
    oracle.clients("f", [x], 3, snapshot=x0)
    nbytes = x.numel * 4
    assert oracle.comm.as_metrics()["comm/bytes_sent"] == 3 * nbytes  # three clients in group f
    assert oracle.comm.as_metrics()["comm/bytes_received"] == 3 * nbytes
    assert oracle.comm.messages == 3
