"""Task code: mean losses, gradients, Hessian-vector products and evaluation of a model on in-memory data.

Nothing here knows about federation: clients and the server both call these
functions on their own shard (Flower's ``task.py`` split).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from fedsweep.task.datasets import Dataset
from fedsweep.task.losses import Loss, cross_entropy
from fedsweep.core.threads import map_on_threads
from fedsweep.core.weights import Weights
from fedsweep.task.models import convolves

CHUNK = 2048  # examples per forward pass when a "full batch" is large
EVAL_PIECE = 500  # examples per forward pass of an evaluation on a CPU, the unit spread over threads
CONV_EVAL_PIECE = 64  # the same for a convolutional model, whose activations outgrow the caches sooner: one
# thread measured 0.43 s on 2,000 images of cifar_cnn in pieces of 32-250 against 0.70 s in pieces of 500,
# ResNet-18 2.98 s on 500 in pieces of 64 against 4.10 s in 250; digits' MLP 0.17 ms on 360 examples in
# one piece against 0.33 ms in pieces of 64


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = cross_entropy) -> torch.Tensor:
    """Mean loss of ``model`` on ``(x, y)``."""
    return loss(model(x), y).mean()


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


def accumulate_grad(model: nn.Module, data: Dataset, loss: Loss = cross_entropy) -> None:
    """Add ∇(mean loss over ``data``) into the parameters' ``.grad``.

    Large sets are processed in chunks, each weighted by its share, so the result
    is the mean over examples whatever the chunking.
    """
    n = len(data)
    for start in range(0, n, CHUNK):
        xs, ys = data.x[start : start + CHUNK], data.y[start : start + CHUNK]
        (loss_fn(model, xs, ys, loss) * (len(ys) / n)).backward()


def mean_grads(
    model: nn.Module,
    data: Dataset,
    points: Sequence[Weights],
    *,
    batch_size: int | None,
    seed: int | None,
    loss: Loss = cross_entropy,
) -> list[Weights]:
    """∇(mean loss) at each of ``points``, all on the same minibatch (drawn by ``seed``)."""
    batch = sample_batch(data, batch_size, seed)
    model.train()
    grads = []
    for point in points:
        point.to_model(model)
        model.zero_grad(set_to_none=True)
        accumulate_grad(model, batch, loss)
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
    loss: Loss = cross_entropy,
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
        value = loss_fn(model, xs, ys, loss) * (len(ys) / n)
        grads = torch.autograd.grad(value, params.tensors, create_graph=True)
        gv = Weights.dot(Weights(dict(zip(params.names, grads))), vector)
        hv = torch.autograd.grad(gv, params.tensors)
        out.add_(Weights(dict(zip(params.names, hv))))
    return out


def evaluate(model: nn.Module, data: Dataset, loss: Loss = cross_entropy, *, threads: int = 1) -> tuple[float, float | None]:
    """(mean loss, accuracy) of ``model`` on ``data``; one host sync at the end. The accuracy
    (argmax of the outputs against integer labels) is None when the labels are not classes.
    On a CPU, pieces of ``EVAL_PIECE`` examples (``CONV_EVAL_PIECE`` for a convolutional model)
    are spread over ``threads`` threads with one torch thread each (the same pieces, so the
    same numbers, for any number of threads)."""
    model.eval()
    classes = not torch.is_floating_point(data.y) and not torch.is_complex(data.y)
    piece = (CONV_EVAL_PIECE if convolves(model) else EVAL_PIECE) if data.x.device.type == "cpu" else CHUNK
    starts = range(0, len(data), piece)

    @torch.no_grad()  # grad mode is per thread
    def sums(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = data.x[start : start + piece], data.y[start : start + piece]
        outputs = model(xs)
        correct = (outputs.argmax(dim=1) == ys).sum() if classes else torch.zeros((), dtype=torch.int64, device=ys.device)
        return loss(outputs, ys).double().sum(), correct

    if threads > 1 and len(starts) > 1 and data.x.device.type == "cpu":
        with ThreadPoolExecutor(max_workers=min(threads, len(starts)), thread_name_prefix="fedsweep-eval") as pool:
            parts = map_on_threads(sums, starts, pool=pool)
    else:
        parts = [sums(start) for start in starts]
    n = max(len(data), 1)
    loss_sum = sum((p[0] for p in parts), torch.zeros((), dtype=torch.float64, device=data.x.device))
    correct = sum((p[1] for p in parts), torch.zeros((), dtype=torch.int64, device=data.x.device))
    return loss_sum.item() / n, (correct.item() / n if classes else None)
