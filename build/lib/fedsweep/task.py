"""Task code: loss, mean gradients and evaluation of a model on in-memory data.

Nothing here knows about federation: clients and the server both call these
functions on their own shard (Flower's ``task.py`` split).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedsweep.data import Dataset
from fedsweep.weights import Weights

CHUNK = 2048  # examples per forward pass when a "full batch" is large


def example_losses(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of each example (cross-entropy), shape ``(len(y),)``."""
    return F.cross_entropy(outputs, y, reduction="none")


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on ``(x, y)``."""
    return F.cross_entropy(model(x), y)


def sample_batch(data: Dataset, batch_size: int | None, seed: int | None) -> Dataset:
    """The minibatch drawn by ``seed``: the whole shard when ``batch_size`` is None or too big.

    The same seed gives the same minibatch, which is how the VRCS correction uses
    one minibatch at both x_t and the snapshot.
    """
    n = len(data)
    if batch_size is None or batch_size >= n:
        return data
    gen = torch.Generator().manual_seed(int(seed if seed is not None else 0))
    idx = torch.randperm(n, generator=gen)[:batch_size]
    return data.subset(idx.to(data.x.device))


def accumulate_grad(model: nn.Module, data: Dataset) -> None:
    """Add ∇(mean loss over ``data``) into the parameters' ``.grad``.

    Large sets are processed in chunks, each weighted by its share, so the result
    is the mean over examples whatever the chunking.
    """
    n = len(data)
    for start in range(0, n, CHUNK):
        xs, ys = data.x[start : start + CHUNK], data.y[start : start + CHUNK]
        (loss_fn(model, xs, ys) * (len(ys) / n)).backward()


def mean_grads(
    model: nn.Module,
    data: Dataset,
    points: Sequence[Weights],
    *,
    batch_size: int | None,
    seed: int | None,
) -> list[Weights]:
    """∇(mean loss) at each of ``points``, all on the same minibatch (drawn by ``seed``)."""
    batch = sample_batch(data, batch_size, seed)
    model.train()
    grads = []
    for point in points:
        point.to_model(model)
        model.zero_grad(set_to_none=True)
        accumulate_grad(model, batch)
        grads.append(Weights.from_grads(model))
    return grads


def mean_hvp(
    model: nn.Module,
    data: Dataset,
    point: Weights,
    vector: Weights,
    *,
    batch_size: int | None,
    seed: int | None,
) -> Weights:
    """∇²(mean loss)(point) · vector by double backward, on the minibatch drawn by ``seed``."""
    batch = sample_batch(data, batch_size, seed)
    point.to_model(model)
    model.train()
    params = Weights.from_model(model)
    out = Weights.zeros_like(vector)
    n = len(batch)
    for start in range(0, n, CHUNK):
        xs, ys = batch.x[start : start + CHUNK], batch.y[start : start + CHUNK]
        loss = loss_fn(model, xs, ys) * (len(ys) / n)
        grads = torch.autograd.grad(loss, params.tensors, create_graph=True)
        gv = Weights.dot(Weights(dict(zip(params.names, grads))), vector)
        hv = torch.autograd.grad(gv, params.tensors)
        out.add_(Weights(dict(zip(params.names, hv))))
    return out


def local_sgd(
    model: nn.Module,
    data: Dataset,
    start: Weights,
    *,
    epochs: int,
    lr: float,
    batch_size: int | None,
    seed: int | None,
) -> Weights:
    """``epochs`` passes of plain SGD (step ``lr``) from ``start``; a detached copy of the result."""
    start.to_model(model)
    model.train()
    n = len(data)
    gen = torch.Generator().manual_seed(int(seed or 0))
    b = n if batch_size is None else min(batch_size, n)
    params = Weights.from_model(model)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(data.x.device) if b < n else None
        for start_i in range(0, n, b):
            batch = data if perm is None else data.subset(perm[start_i : start_i + b])
            model.zero_grad(set_to_none=False)
            loss_fn(model, batch.x, batch.y).backward()
            params.detach().axpy_(-lr, Weights.grad_views(model))
    return params.clone()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``data``; one host sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.x.device)
    for start in range(0, len(data), CHUNK):
        xs, ys = data.x[start : start + CHUNK], data.y[start : start + CHUNK]
        logits = model(xs)
        loss_sum += F.cross_entropy(logits, ys, reduction="sum").double()
        correct += (logits.argmax(dim=1) == ys).sum()
    n = max(len(data), 1)
    return loss_sum.item() / n, correct.item() / n


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
