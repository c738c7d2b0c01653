"""Virtual clients: any subset of a federation's clients, served from one copy of their data.

A request (gradients at some points, a Hessian-vector product, FedAvg's local training)
names clients and one weight per client, and the answer is the weighted sum of the
clients' replies, Σ_i w_i · reply_i, accumulated in float64: one partial aggregate,
never one reply per client (FedJAX's ``for_each_client`` split: *what* a client does
is here, *how* clients are spread over processes is the runtime's business).

Two engines compute the same sums:

* **vectorised** (the default): a gradient or HVP is one pass over the union of the
  clients' examples, each example weighted by ``w_i / n_i`` (chunks of ``CHUNK`` rows);
  local SGD runs a block of clients at once: the forward pass is ``vmap`` of
  ``torch.func.functional_call`` over the clients' stacked parameters (padding masks for
  unequal shards), the backward plain autograd (client c's loss reaches only its own
  parameters, so one backward gives every client's gradient); and clients
  whose local work is a single step, x − lr·∇F_i(x), are folded into one union gradient.
* **loop**: one client at a time, the plain reference. Models with BatchNorm use it,
  because batch statistics make a client's gradient depend on which examples share its
  batch.

Which examples a client uses comes from ``fedsweep.federation.batches``, so both engines,
and any split of the clients over workers, see the same minibatches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedsweep.federation.client_data import ClientData
from fedsweep.federation.batches import client_rows, epoch_order, minibatches
from fedsweep.task.compute import CHUNK
from fedsweep.task.losses import Loss, cross_entropy
from fedsweep.core.device import resolve_device
from fedsweep.core.weights import Weights
from fedsweep.federation.requests import GradRequest, HvpRequest, Request, TrainRequest, rows_of as _rows

BLOCK_BYTES = 256 * 2**20  # memory for one block of clients trained together (stacked parameters)
VMAP_MIN_CLIENTS = 4  # fewer clients train faster one by one (vmap's fixed cost measured ~0.4 ms a step)


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
        self.vectorized = not uses_batch_statistics(self.model) if vectorize == "auto" else bool(vectorize)

    def serve(self, request: Request, clients: np.ndarray, weights: np.ndarray) -> list[Weights]:
        """Σ_i weights[i] · reply of client ``clients[i]``, one float64 ``Weights`` per result
        (one per point for gradients, two for local training with a drift, one otherwise)."""
        clients = np.asarray(clients, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if isinstance(request, GradRequest):
            return self._grads(request, clients, weights)
        if isinstance(request, HvpRequest):
            return [self._hvp(request, clients, weights)]
        if isinstance(request, TrainRequest):
            return self._train(request, clients, weights)
        raise TypeError(f"unknown request {type(request).__name__}")

    def serve_each(self, request: TrainRequest, clients: np.ndarray) -> list[Weights]:
        """Each client's own reply to a training request, stacked: row r of every tensor is
        client ``clients[r]``'s; ``[models]`` or, with a drift, ``[models, mean gradients]``,
        in the model's dtype. For methods that keep state per client (SCAFFOLD); the clients
        still train together under ``vmap``."""
        if not isinstance(request, TrainRequest):
            raise TypeError(f"serve_each answers training requests, not {type(request).__name__}")
        clients = np.asarray(clients, dtype=np.int64)
        x, batch, drift = self._local_setup(request, clients)
        results = 1 if drift is None else 2
        if not self.vectorized or len(clients) < VMAP_MIN_CLIENTS:
            replies = [(model.clone(), mean) for model, mean in self._one_by_one(request, x, clients, batch, drift)]
            return [Weights({n: torch.stack([r[k][n] for r in replies]) for n in x.names}) for k in range(results)]
        blocks, block = [], _block_size(x)
        for lo in range(0, len(clients), block):
            part = np.arange(lo, min(lo + block, len(clients)))
            rows = None if drift is None else _rows(drift, part)
            blocks.append(self._train_stacked(request, x, clients[part], batch[part], rows))
        return [Weights({n: torch.cat([b[k][n] for b in blocks]) for n in x.names}) for k in range(results)]

    def _local_setup(self, req: TrainRequest, clients: np.ndarray) -> tuple[Weights, np.ndarray, Weights | None]:
        """x on this device, each client's minibatch size, and the clients' drift rows."""
        sizes = self.starts[clients + 1] - self.starts[clients]
        batch = sizes if req.batch_size is None else np.minimum(sizes, req.batch_size)
        return req.x.to(self.device), batch, req.drift_rows(clients, self.device)

    # -- gradients and HVPs ------------------------------------------------------------

    def _grads(self, req: GradRequest, clients: np.ndarray, weights: np.ndarray) -> list[Weights]:
        sel = minibatches(self.starts, clients, req.batch_size, req.seed)
        per_example = weights[sel.owner] / sel.counts[sel.owner]

        def weighted_grad(point: Weights) -> Weights:
            point = point.to(self.device)
            if self.vectorized:
                return self._union_grad(point, sel.rows, per_example)
            acc = Weights.zeros_like(point, dtype=torch.float64)
            for i, rows in _by_client(sel.rows, sel.owner, len(clients)):
                acc.axpy_(weights[i], self._union_grad(point, rows, np.full(len(rows), 1.0 / len(rows))))
            return acc

        out = [weighted_grad(point) for point in req.points]
        if req.snapshot is not None:  # Σ w_i (∇F_i(p) − ∇F_i(snapshot)) = Σ w_i ∇F_i(p) − Σ w_i ∇F_i(snapshot)
            at_snapshot = weighted_grad(req.snapshot)
            out = [g.sub_(at_snapshot) for g in out]
        return out

    def _union_grad(self, point: Weights, rows: np.ndarray, per_example: np.ndarray) -> Weights:
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

    # -- local training ----------------------------------------------------------------

    def _train(self, req: TrainRequest, clients: np.ndarray, weights: np.ndarray) -> list[Weights]:
        """[Σ_i w_i · model_i] or, with a drift, [Σ_i w_i · model_i, Σ_i w_i · mean gradient_i]."""
        x, batch, drift = self._local_setup(req, clients)
        if not self.vectorized:
            return self._train_loop(req, x, clients, weights, batch, drift)
        sizes = self.starts[clients + 1] - self.starts[clients]
        out = [Weights.zeros_like(x, dtype=torch.float64) for _ in range(1 if drift is None else 2)]
        single = _local_steps(sizes, batch, req.epochs) == 1  # x − lr·(∇F_i(x) + d_i) (the proximal term is 0 at x): linear, so summed in one pass
        if single.any():
            rows, owner = client_rows(self.starts, clients[single])
            per_example = weights[single][owner] / sizes[single][owner]
            grad = self._union_grad(x, rows, per_example)
            out[0].axpy_(float(weights[single].sum()), x).axpy_(-req.lr, grad)
            if drift is not None:  # the client's one gradient is its mean gradient
                out[0].axpy_(-req.lr, _weighted_rows(drift, weights, single))
                out[1].add_(grad)
        rest = np.flatnonzero(~single)
        block = _block_size(x)
        for lo in range(0, len(rest), block):
            part = rest[lo : lo + block]
            engine = self._train_block if len(part) >= VMAP_MIN_CLIENTS else self._train_loop
            rows = None if drift is None else _rows(drift, part)
            for total, partial in zip(out, engine(req, x, clients[part], weights[part], batch[part], rows)):
                total.add_(partial)
        return out

    def _train_loop(
        self,
        req: TrainRequest,
        x: Weights,
        clients: np.ndarray,
        weights: np.ndarray,
        batch: np.ndarray,
        drift: Weights | None,
    ) -> list[Weights]:
        """Σ_i w_i · SGD_i(x) (and Σ_i w_i · mean gradient_i with a drift), one client after another."""
        out = [Weights.zeros_like(x, dtype=torch.float64) for _ in range(1 if drift is None else 2)]
        for w, replies in zip(weights, self._one_by_one(req, x, clients, batch, drift)):
            for total, reply in zip(out, replies):
                total.axpy_(w, reply)
        return out

    def _one_by_one(
        self, req: TrainRequest, x: Weights, clients: np.ndarray, batch: np.ndarray, drift: Weights | None
    ) -> Iterator[tuple[Weights, Weights]]:
        """Each client's ``(model, mean gradient)`` (:meth:`_train_one`), one after another."""
        sizes = self.starts[clients + 1] - self.starts[clients]
        orders = [epoch_order(self.starts, clients, req.seed, epoch) for epoch in range(req.epochs)]
        for i in range(len(clients)):
            rows = [torch.from_numpy(order[i, : sizes[i]]).to(self.device) for order in orders]
            d = None if drift is None else Weights({name: t[i] for name, t in drift.items()})
            yield self._train_one(req, x, rows, int(batch[i]), d)

    def _train_one(
        self, req: TrainRequest, x: Weights, epochs: list[torch.Tensor], batch: int, drift: Weights | None
    ) -> tuple[Weights, Weights]:
        """One client's local SGD, the plain way (the loop engine): ``epochs[e]`` is its
        visiting order in epoch e. Its model (a view of ``self.model``'s parameters, valid until
        the next client) and the mean of the data gradients it took."""
        x.to_model(self.model)
        self.model.train()
        params = list(self.model.parameters())
        total = [torch.zeros_like(p) for p in params]
        steps = 0
        for order in epochs:
            for lo in range(0, len(order), batch):
                r = order[lo : lo + batch]
                loss = self.loss(self.model(self.x[r]), self.y[r]).mean()
                grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                with torch.no_grad():
                    torch._foreach_add_(total, grads)
                    steps += 1
                    if req.prox:  # ∇ of (prox/2)‖w − x‖², before w moves
                        torch._foreach_add_(grads, torch._foreach_sub(params, x.tensors), alpha=req.prox)
                    if drift is not None:
                        torch._foreach_add_(grads, drift.tensors)
                    torch._foreach_add_(params, grads, alpha=-req.lr)
        mean = Weights(dict(zip(x.names, torch._foreach_div(total, steps))))
        return Weights.from_model(self.model).detach(), mean

    def _train_block(
        self,
        req: TrainRequest,
        x: Weights,
        clients: np.ndarray,
        weights: np.ndarray,
        batch: np.ndarray,
        drift: Weights | None,
    ) -> list[Weights]:
        """Σ_i w_i · SGD_i(x) (and Σ_i w_i · mean gradient_i with a drift) for a block of
        clients trained together (:meth:`_train_stacked`), in float64."""
        w = torch.from_numpy(weights).to(self.device)
        out = []
        for result in self._train_stacked(req, x, clients, batch, drift):
            total = Weights.zeros_like(x, dtype=torch.float64)
            for name, t in total.items():
                t.copy_(torch.tensordot(w, result[name].double(), dims=1))
            out.append(total)
        return out

    def _train_stacked(
        self, req: TrainRequest, x: Weights, clients: np.ndarray, batch: np.ndarray, drift: Weights | None
    ) -> list[dict[str, torch.Tensor]]:
        """A block of clients' local SGD under ``vmap``: their models stacked on a leading axis
        (and, with a drift, their mean gradients likewise).

        Client i's step s uses ranks ``s·b_i .. min((s+1)·b_i, n_i) − 1`` of its epoch order;
        a row of the padded batch outside that range has weight 0, and a client with no
        rows left in an epoch gets a zero gradient (its proximal and drift terms masked
        too), so plain SGD leaves it where it is.
        """
        from torch.func import functional_call, vmap

        model = self.model
        forward = vmap(lambda params, xb: functional_call(model, params, (xb,)))
        sizes = self.starts[clients + 1] - self.starts[clients]
        width = int(batch.max())
        columns = np.arange(width)
        params = {n: t.detach().unsqueeze(0).repeat(len(clients), *([1] * t.dim())).requires_grad_() for n, t in x.items()}
        stacked = list(params.values())
        totals = [torch.zeros_like(t) for t in stacked] if drift is not None else None
        model.train()
        for epoch in range(req.epochs):
            order = torch.from_numpy(epoch_order(self.starts, clients, req.seed, epoch)).to(self.device)
            for s in range(int(math.ceil((sizes / batch).max()))):
                ranks = s * batch[:, None] + columns[None, :]
                valid = (columns[None, :] < batch[:, None]) & (ranks < sizes[:, None])
                counts = np.maximum(valid.sum(axis=1, keepdims=True), 1)
                rows = order.gather(1, torch.from_numpy(np.minimum(ranks, sizes[:, None] - 1)).to(self.device))
                wb = torch.from_numpy((valid / counts).astype(np.float32)).to(self.device)
                outputs = forward(params, self.x[rows])  # (clients, width, classes)
                losses = self.loss(outputs.flatten(0, 1), self.y[rows].flatten(0, 1))
                grads = torch.autograd.grad((losses * wb.flatten()).sum(), stacked)  # client c's: its params' only
                with torch.no_grad():
                    if totals is not None:  # a client without rows left adds a zero gradient
                        torch._foreach_add_(totals, grads)
                    if req.prox or drift is not None:  # only clients that take this step
                        active = torch.from_numpy(valid.any(axis=1).astype(np.float32)).to(self.device)
                        for k, (g, w, x0) in enumerate(zip(grads, stacked, x.tensors)):
                            mask = active.view(-1, *([1] * x0.dim()))
                            if req.prox:
                                g.add_((w - x0) * mask, alpha=req.prox)
                            if drift is not None:
                                g.add_(drift.tensors[k] * mask)
                    torch._foreach_add_(stacked, grads, alpha=-req.lr)
        out = [{n: t.detach() for n, t in params.items()}]
        if totals is not None:  # each client's mean gradient: its summed gradients over its steps
            steps = torch.from_numpy(_local_steps(sizes, batch, req.epochs).astype(np.float32)).to(self.device)
            out.append({n: t / steps.view(-1, *([1] * (t.dim() - 1))) for n, t in zip(params, totals)})
        return out


def _local_steps(sizes: np.ndarray, batch: np.ndarray, epochs: int) -> np.ndarray:
    """Each client's number of local SGD steps: ⌈n_i / b_i⌉ per epoch."""
    return -(-sizes // batch) * epochs


def _block_size(x: Weights) -> int:
    """Clients per ``vmap`` block: ``BLOCK_BYTES`` of stacked float32 parameters and their work."""
    return max(1, BLOCK_BYTES // (8 * 4 * x.numel))


def _weighted_rows(stacked: Weights, weights: np.ndarray, mask: np.ndarray) -> Weights:
    """Σ_{i: mask_i} weights[i] · row i of per-client stacked tensors, in float64."""
    w = torch.from_numpy(np.where(mask, weights, 0.0))
    return Weights({name: torch.tensordot(w.to(t.device), t.double(), dims=1) for name, t in stacked.items()})


def _by_client(rows: np.ndarray, owner: np.ndarray, clients: int):
    """``(position, rows of that client)`` for every client of a selection (rows grouped by owner)."""
    cuts = np.searchsorted(owner, np.arange(clients + 1))
    for i in range(clients):
        yield i, rows[cuts[i] : cuts[i + 1]]
