"""FedAvg as a plain PyTorch loop (the baseline of ``bench/realistic.py``), and its check against fedsweep.

A round of the plain loop: for each sampled client, copy the global weights into the one
model, run one epoch of minibatch SGD (``p -= lr * grad``) over the client's examples in a
random order, add ``n_i / Σ n_j`` times the result to a running sum; the sum is the new
global model; evaluate it on the test set. One model, one running sum, the data held once
(each client's shard is a view of the training tensor).

:func:`check` runs one round of fedsweep's FedAvg (``runtime=local``) and the plain loop on
the same clients, in the same example order (fedsweep's draws), and compares the models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shard = tuple[Tensor, Tensor]


def shards_of(x: Tensor, y: Tensor, starts: np.ndarray) -> list[Shard]:
    """Client i's examples as views of ``x`` and ``y``: rows ``starts[i]:starts[i + 1]``."""
    return [(x[a:b], y[a:b]) for a, b in zip(starts[:-1].tolist(), starts[1:].tolist())]


def plain_round(
    model: nn.Module,
    x: Sequence[Tensor],
    shards: Sequence[Shard],
    chosen: Sequence[int],
    orders: Sequence[Tensor],
    weights: Sequence[float],
    *,
    lr: float,
    batch_size: int,
) -> tuple[list[Tensor], dict[str, float]]:
    """One FedAvg round: Σ_i weights[i] · (client ``chosen[i]``'s model after one epoch of SGD
    from ``x`` visiting its rows in ``orders[i]``). Returns the new weights and the seconds
    spent training and summing, and the local steps taken."""
    params = list(model.parameters())
    total = [torch.zeros_like(t) for t in x]
    train = add = 0.0
    steps = 0
    for client, order, weight in zip(chosen, orders, weights):
        start = time.perf_counter()
        xs, ys = shards[client]
        with torch.no_grad():
            for p, t in zip(params, x):
                p.copy_(t)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)
            steps += 1
        middle = time.perf_counter()
        with torch.no_grad():
            for s, p in zip(total, params):
                s.add_(p, alpha=float(weight))
        train, add = train + middle - start, add + time.perf_counter() - middle
    return total, {"train": train, "aggregate": add, "steps": steps}


def evaluate(model: nn.Module, x: Sequence[Tensor], test: Shard, piece: int | None = None) -> tuple[float, float]:
    """Test loss and accuracy of weights ``x`` (loaded into ``model``): one forward pass over the
    whole test set, or passes over pieces of ``piece`` examples."""
    with torch.no_grad():
        for p, t in zip(model.parameters(), x):
            p.copy_(t)
        n = len(test[1])
        step = piece or n
        loss = correct = 0.0
        for lo in range(0, n, step):
            logits, labels = model(test[0][lo : lo + step]), test[1][lo : lo + step]
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
        return loss / n, correct / n


def check(overrides: list[str]) -> dict[str, float]:
    """fedsweep's first FedAvg round (``runtime=local``; ``runtime.vectorize`` in ``overrides``
    picks the engine) against the plain loop on the same clients and example order: max
    |difference| of the models, relative to the largest |update|, and what both did (clients,
    steps, aggregation weights)."""
    from fedsweep.algorithms.fedavg import FedAvg
    from fedsweep.experiment.build import build, prepare
    from fedsweep.experiment.config import compose, to_container, validate
    from fedsweep.federation.batches import epoch_order
    from fedsweep.federation.client_data import ClientData
    from fedsweep.federation.oracle import FederatedOracle
    from fedsweep.federation.runtime.local import LocalRuntime

    cfg = to_container(compose([*overrides, "runtime=local"]))
    validate(cfg)
    setup = prepare(cfg)
    run = build(cfg, setup, LocalRuntime(vectorize=cfg["runtime"]["vectorize"], device="cpu"))
    assert isinstance(run.method, FedAvg)
    seen: dict[str, object] = {}
    train = FederatedOracle.train

    def spy(self, program, x, *, clients, weights, seed, **kw):
        seen.update(clients=np.asarray(clients), weights=np.asarray(weights), seed=seed, program=program)
        return train(self, program, x, clients=clients, weights=weights, seed=seed, **kw)

    FederatedOracle.train = spy
    try:
        x0 = [t.clone() for t in run.state.x.tensors]
        state, _ = run.method.round(run.state, run.oracle)
    finally:
        FederatedOracle.train = train
    data = ClientData.from_partition(setup.partition)
    starts, chosen, program = data.starts, seen["clients"], seen["program"]
    order = epoch_order(starts, chosen, seen["seed"], 0)
    sizes = starts[chosen + 1] - starts[chosen]
    orders = [torch.from_numpy(order[i, : sizes[i]] - starts[c]) for i, c in enumerate(chosen)]
    model = setup.model_fn()
    shards = shards_of(torch.from_numpy(data.x), torch.from_numpy(data.y), starts)
    plain, parts = plain_round(model, x0, shards, chosen.tolist(), orders, seen["weights"].tolist(),
                               lr=program.optimizer.lr, batch_size=program.batch_size)  # fmt: skip
    ours = state.x.tensors
    diff = max((a - b).abs().max().item() for a, b in zip(plain, ours))
    update = max((a - b).abs().max().item() for a, b in zip(plain, x0))
    fedsweep_steps = int((-(-sizes // program.batch_size) * program.epochs).sum())  # the engines' count
    return {
        "clients": len(chosen), "max_abs_diff": diff, "relative_to_update": diff / update,
        "plain_steps": parts["steps"], "fedsweep_steps": fedsweep_steps,
        "weights_min": float(seen["weights"].min()), "weights_max": float(seen["weights"].max()),
        "weights_sum": float(seen["weights"].sum()),
        "plain_weights": "n_i / sum_S n_j", "size_min": int(sizes.min()), "size_max": int(sizes.max()),
    }  # fmt: skip
