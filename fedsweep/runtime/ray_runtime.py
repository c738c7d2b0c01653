"""Clients as long-lived Ray actors with fractional CPU/GPU shares.

Each actor holds its shard and a model for the whole run. A request puts the
points into the object store once and every actor of the group reads them
(zero-copy for ``Weights``); replies come back as ``Weights`` too.

Inside a Ray Tune trial the actors join the trial's placement group (Tune
captures child tasks by default), so the trial must reserve one bundle per
client: see ``fedsweep.tune.trial_resources``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ray
from torch import nn

from fedsweep.data import Dataset
from fedsweep.methods.oracle import Group
from fedsweep.runtime.base import ClientResources, Runtime, numbered
from fedsweep.runtime.client import Client
from fedsweep.weights import Weights


class RayRuntime(Runtime):
    def __init__(
        self,
        shards: dict[Group, Sequence[Dataset]],
        model_fn: Callable[[], nn.Module],
        *,
        batch_size: int | None,
        resources: ClientResources,
    ) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayRuntime needs a running Ray: call ray.init() first")
        actor_cls = ray.remote(Client)
        # Ray hides GPUs from actors without a GPU share, so "auto" resolves to cuda
        # exactly when the actor holds one; torch threads follow the CPU share.
        threads = max(1, math.floor(resources.num_cpus))
        self.actors: dict[Group, list] = {group: [] for group in shards}
        for group, index, data in numbered(shards):
            actor = actor_cls.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus).remote(
                data, model_fn, index=index, batch_size=batch_size, device="auto", num_threads=threads
            )
            self.actors[group].append(actor)
        self._last: tuple[ray.ObjectRef, bool, list[Weights]] | None = None
        self._sizes = {g: ray.get([a.num_examples.remote() for a in actors]) for g, actors in self.actors.items()}

    def sizes(self, group: Group) -> list[int]:
        return list(self._sizes[group])

    def broadcast(self, points: Sequence[Weights], *, single: bool = False) -> ray.ObjectRef:
        """Put ``points`` (or, with ``single``, its one element) in the object store once: the
        same points asked of both groups (a full communication) reuse the reference."""
        items = list(points)
        last = self._last
        if last is None or last[1] != single or len(last[2]) != len(items) or any(
            a is not b for a, b in zip(last[2], items)
        ):
            self._last = (ray.put(items[0] if single else items), single, items)  # items keep their ids valid
        return self._last[0]

    def gather_grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[list[Weights]]:
        points_ref = self.broadcast(points)
        return ray.get([a.grads.remote(points_ref, seed) for a in self.actors[group]])

    def gather_updates(
        self, group: Group, x: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int
    ) -> list[Weights]:
        x_ref = self.broadcast([x], single=True)
        return ray.get(
            [
                a.train.remote(x_ref, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
                for a in self.actors[group]
            ]
        )

    def gather_hvps(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> list[Weights]:
        point_ref, vector_ref = ray.put(point), ray.put(vector)
        return ray.get([a.hvp.remote(point_ref, vector_ref, seed) for a in self.actors[group]])

    def close(self) -> None:
        for actors in self.actors.values():
            for actor in actors:
                ray.kill(actor)
        self.actors = {}
