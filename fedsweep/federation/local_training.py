"""Local training of any client program (``fedsweep.algorithms.programs``): the engines.

A :class:`TrainRequest` carries a program, the broadcast x, the method's other broadcast
vectors and its per-client rows. Three engines run it and agree to float rounding:

* **stacked** (the default for blocks of ``VMAP_MIN_CLIENTS`` or more): the block's
  parameters stacked on a leading axis, the forward pass ``vmap`` of
  ``torch.func.functional_call`` over them, one autograd backward for all (client c's loss
  reaches only its own parameters), padding masks for unequal shards: a client with no rows
  left in an epoch takes no step (its parameters, momentum and state stay as they are);
* **one by one**: the model itself, one client after another (models with BatchNorm, whose
  batch statistics mix the examples of a stacked batch, and small blocks);
* **fold**: clients whose local work is a single step of an ``affine`` program, summed in
  one gradient over the union of their examples and one step of a pseudo-client whose
  gradient and rows are the weighted means (exact for an affine reply).

Which examples a client uses comes from ``fedsweep.federation.batches`` (one key per
example), so the engines, and any split of the clients over workers, see the same minibatches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedsweep.algorithms.programs import Clients, LocalSGD, Step, Vectors
from fedsweep.core.weights import Weights
from fedsweep.federation.batches import client_rows, epoch_order
from fedsweep.federation.requests import SCALAR, Reply, TrainRequest

if TYPE_CHECKING:
    from fedsweep.federation.virtual_clients import VirtualClients

BLOCK_BYTES = 256 * 2**20  # memory for one block of clients trained together (stacked parameters)
VMAP_MIN_CLIENTS = 4  # fewer clients train faster one by one (vmap's fixed cost measured ~0.4 ms a step)


def train_sums(vc: VirtualClients, req: TrainRequest, clients: np.ndarray, weights: np.ndarray) -> Reply:
    """Σ_i weights[i] · reply_i for every reply field, in float64."""
    run = _Run(vc, req, clients)
    totals: Reply = {}
    fold = (run.steps == 1) & req.program.affine if vc.vectorized else np.zeros(len(clients), bool)
    if fold.any():
        _accumulate(totals, run.fold(np.flatnonzero(fold), weights[fold]), None, run.x)
    for part, engine in run.blocks(np.flatnonzero(~fold)):
        _accumulate(totals, engine(part), torch.from_numpy(weights[part]), run.x)
    return totals


def train_each(vc: VirtualClients, req: TrainRequest, clients: np.ndarray) -> Reply:
    """Each client's own reply, stacked (row r: ``clients[r]``'s), in the model's dtype."""
    run = _Run(vc, req, clients)
    replies = [engine(part) for part, engine in run.blocks(np.arange(len(clients)))]
    return {name: _as_weights([r[name] for r in replies], run.x) for name in replies[0]}


class _Run:
    """One request over a set of clients on one ``VirtualClients``."""

    def __init__(self, vc: VirtualClients, req: TrainRequest, clients: np.ndarray) -> None:
        self.vc, self.req, self.program = vc, req, req.program
        self.clients = np.asarray(clients, dtype=np.int64)
        self.x = req.x.to(vc.device)
        self.shared = {key: w.to(vc.device).tensors for key, w in req.shared.items()}
        self.rows = req.rows_for(self.clients, vc.device)
        self.sizes = vc.starts[self.clients + 1] - vc.starts[self.clients]
        bs = self.program.batch_size
        self.batch = self.sizes if bs is None else np.minimum(self.sizes, bs)
        self.steps = -(-self.sizes // self.batch) * self.program.epochs

    def blocks(self, positions: np.ndarray) -> Iterator[tuple[np.ndarray, callable]]:
        """Blocks of ``positions`` with the engine that trains each."""
        if not self.vc.stacked:
            for p in positions:
                yield np.array([p]), self.one
            return
        block = max(1, BLOCK_BYTES // (8 * 4 * self.x.numel))
        for lo in range(0, len(positions), block):
            part = positions[lo : lo + block]
            if len(part) >= VMAP_MIN_CLIENTS:
                yield part, self.stacked
            else:
                yield from ((np.array([p]), self.one) for p in part)

    def _clients(self, part: np.ndarray, steps: Tensor) -> Clients:
        rows = {key: [t[torch.from_numpy(part).to(t.device)] for t in ts] for key, ts in self.rows.items()}
        return Clients(x=self.x.tensors, shared=self.shared, rows=rows, steps=steps)

    def _orders(self, part: np.ndarray) -> list[Tensor]:
        starts, seed = self.vc.starts, self.req.seed
        return [torch.from_numpy(epoch_order(starts, self.clients[part], seed, e)).to(self.vc.device)
                for e in range(self.program.epochs)]  # fmt: skip

    def stacked(self, part: np.ndarray) -> dict[str, Vectors | Tensor]:
        """A block trained together under ``vmap``: its stacked replies."""
        from torch.func import functional_call, vmap

        vc, names = self.vc, self.x.names
        forward = vmap(lambda params, xb: functional_call(vc.model, dict(zip(names, params)), (xb,)))
        sizes, batch, n = self.sizes[part], self.batch[part], len(part)
        columns = np.arange(int(batch.max()))
        params = [t.detach().unsqueeze(0).repeat(n, *([1] * t.dim())).requires_grad_() for t in self.x.tensors]
        values = [p.detach() for p in params]
        steps = torch.zeros(n, device=vc.device)
        optimizer = _Optimizer(self.program.optimizer, values)
        clients = self._clients(part, steps)  # ``steps`` counts in place
        state = self.program.init(clients, values)
        vc.model.train()
        for order in self._orders(part):
            for s in range(int((-(-sizes // batch)).max())):
                ranks = s * batch[:, None] + columns[None, :]
                valid = (columns[None, :] < batch[:, None]) & (ranks < sizes[:, None])
                rows = order.gather(1, torch.from_numpy(np.minimum(ranks, sizes[:, None] - 1)).to(vc.device))
                wb = torch.from_numpy((valid / np.maximum(valid.sum(1, keepdims=True), 1)).astype(np.float32))
                losses = vc.loss(forward(params, vc.x[rows]).flatten(0, 1), vc.y[rows].flatten(0, 1))
                grads = list(torch.autograd.grad((losses * wb.to(vc.device).flatten()).sum(), params))
                active = valid.any(axis=1)
                mask = None if active.all() else torch.from_numpy(active).to(vc.device)
                with torch.no_grad():
                    step = self.program.step(clients, values, grads, state)
                    state = optimizer.apply(values, step, state, mask)
                    steps += 1 if mask is None else mask.to(steps.dtype)
        return self.program.reply(clients, values, state)

    def one(self, part: np.ndarray) -> dict[str, Vectors | Tensor]:
        """One client on the model itself: its reply, stacked as a block of one."""
        vc, model = self.vc, self.vc.model
        self.x.to_model(model)
        model.train()
        params = list(model.parameters())
        values = [p.detach().unsqueeze(0) for p in params]  # views: updates reach the model
        steps = torch.zeros(1, device=vc.device)
        optimizer = _Optimizer(self.program.optimizer, values)
        clients = self._clients(part, steps)  # ``steps`` counts in place
        state = self.program.init(clients, values)
        size, batch = int(self.sizes[part[0]]), int(self.batch[part[0]])
        for order in self._orders(part):
            for lo in range(0, size, batch):
                r = order[0, lo : min(lo + batch, size)]
                loss = vc.loss(model(vc.x[r]), vc.y[r]).mean()
                grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                with torch.no_grad():
                    step = self.program.step(clients, values, [g.unsqueeze(0) for g in grads], state)
                    state = optimizer.apply(values, step, state, None)
                    steps += 1
        reply = self.program.reply(clients, values, state)
        return {k: v.clone() if isinstance(v, Tensor) else [t.clone() for t in v] for k, v in reply.items()}

    def fold(self, part: np.ndarray, weights: np.ndarray) -> dict[str, Vectors | Tensor]:
        """Σ_i w_i · reply_i for one-step clients of an affine program, in float64: one gradient
        over the union of their examples, one step of the weighted-mean pseudo-client."""
        total = float(weights.sum())
        rows, owner = client_rows(self.vc.starts, self.clients[part])
        grad = self.vc.union_grad(self.x, rows, weights[owner] / self.sizes[part][owner])
        mean = torch.from_numpy(weights / total).to(self.vc.device)
        pseudo = Clients(
            x=[t.double() for t in self.x.tensors],
            shared={k: [t.double() for t in ts] for k, ts in self.shared.items()},
            rows={k: [torch.tensordot(mean, t[torch.from_numpy(part)].double(), dims=1).unsqueeze(0) for t in ts]
                  for k, ts in self.rows.items()},  # fmt: skip
            steps=torch.zeros(1, dtype=torch.float64, device=self.vc.device),
        )
        values = [t.unsqueeze(0).clone() for t in pseudo.x]
        state = self.program.init(pseudo, values)
        step = self.program.step(pseudo, values, [(g / total).unsqueeze(0) for g in grad.tensors], state)
        state = _Optimizer(self.program.optimizer, values).apply(values, step, state, None)
        reply = self.program.reply(Clients(pseudo.x, pseudo.shared, pseudo.rows, pseudo.steps + 1), values, state)
        return {k: (v * total if isinstance(v, Tensor) else [t * total for t in v]) for k, v in reply.items()}


class _Optimizer:
    """``LocalSGD`` over stacked parameters, with a momentum buffer per client; ``mask`` (B,)
    leaves the clients that take no step untouched (parameters, buffers and state)."""

    def __init__(self, spec: LocalSGD, params: Vectors) -> None:
        self.spec = spec
        self.buffers = [torch.zeros_like(p) for p in params] if spec.momentum else None

    def apply(
        self, params: Vectors, step: Step, state: Mapping[str, Vectors], mask: Tensor | None
    ) -> Mapping[str, Vectors]:
        spec, masks = self.spec, None if mask is None else [_expand(mask, p) for p in params]
        d = step.direction
        if spec.weight_decay:
            d = [g + spec.weight_decay * p for g, p in zip(d, params)]
        update = d
        if self.buffers is not None:
            new = [spec.momentum * b + g for b, g in zip(self.buffers, d)]
            self.buffers = new if masks is None else [torch.where(m, n, b) for m, n, b in zip(masks, new, self.buffers)]
            update = [g + spec.momentum * b for g, b in zip(d, self.buffers)] if spec.nesterov else self.buffers
        if step.outside is not None:
            update = [u + o for u, o in zip(update, step.outside)]
        if masks is not None:
            update = [u * m.to(u.dtype) for u, m in zip(update, masks)]
        torch._foreach_add_(params, update, alpha=-spec.lr)
        if masks is None or not step.state:
            return step.state if step.state else state
        return {k: [torch.where(_expand(mask, n), n, o) for n, o in zip(new, state[k])] for k, new in step.state.items()}


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _accumulate(totals: Reply, reply: dict[str, Vectors | Tensor], weights: Tensor | None, x: Weights) -> None:
    """``totals[name] += Σ_b weights[b] · reply[name][b]`` in float64 (``weights`` None: summed already).
    A block of one client (the one-by-one engine) is added in place, without a float64 copy."""
    for name, value in reply.items():
        tensors = [value] if isinstance(value, Tensor) else value
        if name not in totals:  # one float64 buffer (Weights' fused path), as every reply's sums
            names = (SCALAR,) if isinstance(value, Tensor) else x.names
            totals[name] = Weights.zeros_like(Weights(dict(zip(names, [t[0] for t in tensors]))), dtype=torch.float64)
        target = list(totals[name].values())
        if weights is None:
            torch._foreach_add_(target, [t.double().sum(0) for t in tensors])
        elif len(weights) == 1:
            torch._foreach_add_(target, [t[0] for t in tensors], alpha=float(weights[0]))
        else:
            w = weights.to(tensors[0].device, torch.float64)
            torch._foreach_add_(target, [torch.tensordot(w, t.double(), dims=1) for t in tensors])


def _as_weights(parts: list[Vectors | Tensor], x: Weights) -> Weights:
    """Stacked replies of consecutive blocks joined into one ``Weights`` (row r: client r)."""
    if isinstance(parts[0], Tensor):
        return Weights({SCALAR: torch.cat(parts)})
    return Weights({name: torch.cat([p[k] for p in parts]) for k, name in enumerate(x.names)})
