"""What a Ray pool asks of the cluster: ``workers: auto`` and ``num_gpus: auto`` resolved for the
CPUs and GPUs a run may use (a single run: the machine's; a sweep's trial: its share). No Ray
and no torch here: the sweep driver resolves trials' shares before Ray starts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def worker_count(workers: int | str, num_cpus: float, cpus: float) -> int:
    """``workers: auto`` for a run that may use ``cpus`` CPUs: one worker per ``num_cpus`` of
    them; none below 2 CPUs, where the run's own process serves its clients (a pool of one
    worker adds a process, a copy of the model and a round trip, and no parallelism)."""
    if workers != "auto":
        return int(workers)
    if cpus < 2:
        return 0
    return max(1, int(cpus // num_cpus)) if num_cpus > 0 else 1


def gpu_share(num_gpus: float | str, participants: int, cluster_gpus: float) -> float:
    """``num_gpus: auto``: no GPU share without GPUs, else the largest 1/2^k (a fraction that
    divides 1, as Ray advises) that fits a trial's workers and its server (``participants``,
    one share each) on one GPU."""
    if num_gpus != "auto":
        return float(num_gpus)
    if cluster_gpus <= 0:
        return 0.0
    return 1.0 / 2 ** math.ceil(math.log2(participants))


def resolve(node: Mapping[str, Any], *, cpus: float, gpus: float) -> dict[str, Any]:
    """A pool's config ``node`` (a copy) with ``workers`` and ``num_gpus`` resolved."""
    workers = worker_count(node.get("workers", "auto"), node.get("num_cpus", 1), cpus)
    return {**node, "workers": workers, "num_gpus": gpu_share(node.get("num_gpus", "auto"), workers + 1, gpus)}
