"""Virtual clients: any subset of a federation's clients, served from one copy of their data.

A request (gradients at some points, a Hessian-vector product, local training under a client
program) names clients and one weight per client, and the answer is the weighted sum of the
clients' replies, Σ_i w_i · reply_i, accumulated in float64: one partial aggregate, never one
reply per client (FedJAX's ``for_each_client`` split: *what* a client does is the method's
program, *how* clients are spread over processes is the runtime's business). ``serve_each``
answers with every client's own reply instead, for methods that keep per-client state.

Gradients and HVPs are one pass over the union of the clients' examples, each example weighted
by ``w_i / n_i`` (chunks of ``CHUNK`` rows); local training runs on the engines of
``fedsweep.federation.local_training``. Models with BatchNorm are served one client at a time
(``vectorized`` False), because batch statistics make a client's gradient depend on which
examples share its batch (``engines``). Which examples a client uses comes from
``fedsweep.federation.batches``, so every engine, and any split of the clients over workers,
sees the same minibatches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedsweep.federation.client_data import ClientData
from fedsweep.federation.batches import minibatches
from fedsweep.federation.local_training import train_each, train_sums
from fedsweep.task.models import convolves
from fedsweep.task.compute import CHUNK
from fedsweep.task.losses import Loss, cross_entropy
from fedsweep.core.device import resolve_device
from fedsweep.core.weights import Weights
from fedsweep.federation.requests import GradRequest, HvpRequest, Reply, Request, TrainRequest



def engines(model: nn.Module, vectorize: bool | str, device: torch.device) -> tuple[bool, bool]:
    """``(vectorized, stacked)``: whether many clients' gradients are one pass over the union of
    their examples (and one-step clients are folded into one), and whether local training runs
    blocks of clients under ``vmap``. ``true``: both; ``false``: neither (one client at a time).
    ``auto``: neither if the model has BatchNorm (its batch statistics mix examples); else the
    union pass, and ``vmap`` blocks unless the model convolves on a CPU: ``vmap`` turns a
    block's convolutions into grouped ones, which the CPU kernels run slower than one client's
    at a time (figures in docs/performance.md)."""
    if vectorize != "auto":
        return bool(vectorize), bool(vectorize)
    union = not uses_batch_statistics(model)
    return union, union and not (convolves(model) and device.type == "cpu")


def uses_batch_statistics(model: nn.Module) -> bool:
    """True if a module normalises with batch statistics (its output mixes examples)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of ``array``, also of a read-only one (Ray's object store); never written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class VirtualClients:
    """Serves requests for any of ``data``'s clients with one model and one copy of the data."""

    def __init__(
        self,
        data: ClientData,
        model_fn: Callable[[], nn.Module],
        *,
        loss: Loss = cross_entropy,
        device: str | torch.device = "cpu",
        vectorize: bool | str = "auto",
    ) -> None:
        self.device = resolve_device(str(device))
        self.x = as_tensor(data.x).to(self.device)
        self.y = as_tensor(data.y).to(self.device)
        self.starts = data.starts
        self.loss = loss
        self.model = model_fn().to(self.device)
        self.vectorized, self.stacked = engines(self.model, vectorize, self.device)

    def serve(self, request: Request, clients: np.ndarray, weights: np.ndarray) -> Reply:
        """Σ_i weights[i] · reply of client ``clients[i]``, a float64 ``Weights`` per reply field:
        ``"0"``, ``"1"``, … (one per point) for gradients, ``"hvp"``, or the program's fields."""
        clients = np.asarray(clients, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if isinstance(request, GradRequest):
            return {str(k): g for k, g in enumerate(self._grads(request, clients, weights))}
        if isinstance(request, HvpRequest):
            return {"hvp": self._hvp(request, clients, weights)}
        if isinstance(request, TrainRequest):
            return train_sums(self, request, clients, weights)
        raise TypeError(f"unknown request {type(request).__name__}")

    def serve_each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        """Each client's own reply to a training request, stacked (row r: ``clients[r]``'s), in
        the model's dtype; the clients still train together under ``vmap``."""
        if not isinstance(request, TrainRequest):
            raise TypeError(f"serve_each answers training requests, not {type(request).__name__}")
        return train_each(self, request, np.asarray(clients, dtype=np.int64))

    # -- gradients and HVPs ------------------------------------------------------------

    def _grads(self, req: GradRequest, clients: np.ndarray, weights: np.ndarray) -> list[Weights]:
        sel = minibatches(self.starts, clients, req.batch_size, req.seed)
        per_example = weights[sel.owner] / sel.counts[sel.owner]

        def weighted_grad(point: Weights) -> Weights:
            point = point.to(self.device)
            if self.vectorized:
                return self.union_grad(point, sel.rows, per_example)
            acc = Weights.zeros_like(point, dtype=torch.float64)
            for i, rows in _by_client(sel.rows, sel.owner, len(clients)):
                acc.axpy_(weights[i], self.union_grad(point, rows, np.full(len(rows), 1.0 / len(rows))))
            return acc

        out = [weighted_grad(point) for point in req.points]
        if req.snapshot is not None:  # Σ w_i (∇F_i(p) − ∇F_i(snapshot)) = Σ w_i ∇F_i(p) − Σ w_i ∇F_i(snapshot)
            at_snapshot = weighted_grad(req.snapshot)
            out = [g.sub_(at_snapshot) for g in out]
        return out

    def union_grad(self, point: Weights, rows: np.ndarray, per_example: np.ndarray) -> Weights:
        """∇ Σ_j c_j ℓ_j(point) over ``rows`` with weights ``c = per_example``, in float64."""
        point.to_model(self.model)
        self.model.train()
        acc = Weights.zeros_like(point, dtype=torch.float64)
        for lo in range(0, len(rows), CHUNK):
            r, c = self._chunk(rows, per_example, lo)
            self.model.zero_grad(set_to_none=True)
            (self.loss(self.model(self.x[r]), self.y[r]) * c).sum().backward()
            acc.add_(Weights.grad_views(self.model))
        return acc

    def _hvp(self, req: HvpRequest, clients: np.ndarray, weights: np.ndarray) -> Weights:
        sel = minibatches(self.starts, clients, req.batch_size, req.seed)
        point, vector = req.point.to(self.device), req.vector.to(self.device)
        if self.vectorized:
            return self._union_hvp(point, vector, sel.rows, weights[sel.owner] / sel.counts[sel.owner])
        acc = Weights.zeros_like(point, dtype=torch.float64)
        for i, rows in _by_client(sel.rows, sel.owner, len(clients)):
            acc.axpy_(weights[i], self._union_hvp(point, vector, rows, np.full(len(rows), 1.0 / len(rows))))
        return acc

    def _union_hvp(self, point: Weights, vector: Weights, rows: np.ndarray, per_example: np.ndarray) -> Weights:
        """∇²(Σ_j c_j ℓ_j)(point) · vector by double backward, in float64."""
        point.to_model(self.model)
        self.model.train()
        params = Weights.from_model(self.model)
        acc = Weights.zeros_like(point, dtype=torch.float64)
        for lo in range(0, len(rows), CHUNK):
            r, c = self._chunk(rows, per_example, lo)
            loss = (self.loss(self.model(self.x[r]), self.y[r]) * c).sum()
            grads = torch.autograd.grad(loss, params.tensors, create_graph=True)
            gv = Weights.dot(Weights(dict(zip(params.names, grads))), vector)
            acc.add_(Weights(dict(zip(params.names, torch.autograd.grad(gv, params.tensors)))))
        return acc

    def _chunk(self, rows: np.ndarray, per_example: np.ndarray, lo: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.from_numpy(rows[lo : lo + CHUNK]).to(self.device)
        c = torch.from_numpy(per_example[lo : lo + CHUNK]).to(self.device, torch.float32)
        return r, c


def _by_client(rows: np.ndarray, owner: np.ndarray, clients: int):
    """``(position, rows of that client)`` for every client of a selection (rows grouped by owner)."""
    cuts = np.searchsorted(owner, np.arange(clients + 1))
    for i in range(clients):
        yield i, rows[cuts[i] : cuts[i + 1]]
