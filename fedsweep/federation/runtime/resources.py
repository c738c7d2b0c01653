"""What a Ray pool asks of the cluster: ``workers``, ``num_gpus`` and ``driver_serves: auto`` resolved for the
CPUs and GPUs a run may use (a single run: the machine's; a sweep's trial: its share). No Ray
and no torch here: the sweep driver resolves trials' shares before Ray starts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def worker_count(workers: int | str, num_cpus: float, cpus: float, *, driver_serves: bool = False) -> int:
    """``workers: auto`` for a run that may use ``cpus`` CPUs: one lane per ``num_cpus`` of them,
    each a worker, but for the run's own process when it serves a share (``driver_serves``); none
    below 2 CPUs, where the run's own process serves its clients (a pool of one worker adds a
    process, a copy of the model and a round trip, and no parallelism)."""
    if workers != "auto":
        return int(workers)
    if cpus < 2:
        return 0
    lanes = max(1, int(cpus // num_cpus)) if num_cpus > 0 else 1
    return lanes - 1 if driver_serves else lanes


def driver_serves(node: Mapping[str, Any], *, gpus: float) -> bool:
    """``driver_serves: auto``: the run's own process serves a share of the clients beside its
    workers when the pool's size is ``auto`` and it computes on CPUs (no GPU share). Its process
    holds torch, the model and the data already and waits idle while the workers compute: on 2
    cores, one worker and the driver keep both busy with a process (450–520 MB of PSS here) less than two
    workers. An explicit ``workers`` keeps its meaning: that many workers, the driver coordinating."""
    serves = node.get("driver_serves", "auto")
    if serves != "auto":
        return bool(serves)
    num_gpus = node.get("num_gpus", "auto")
    on_gpus = gpus > 0 if num_gpus == "auto" else float(num_gpus) > 0
    return node.get("workers", "auto") == "auto" and not on_gpus


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
    """A pool's config ``node`` (a copy) with ``workers``, ``num_gpus`` and ``driver_serves`` resolved."""
    serves = driver_serves(node, gpus=gpus)
    workers = worker_count(node.get("workers", "auto"), node.get("num_cpus", 1), cpus, driver_serves=serves)
    share = gpu_share(node.get("num_gpus", "auto"), workers + 1, gpus)
    return {**node, "workers": workers, "num_gpus": share, "driver_serves": serves and workers > 0}


def check_fits(node: Mapping[str, Any], *, cpus: float, gpus: float, where: str, trial: bool = False) -> None:
    """A one-line ConfigError when a pool (``node``, resolved) asks more than Ray ``where`` has:
    its workers' CPUs and GPUs together, or one worker's GPU share; Ray would keep such a
    request pending forever. A sweep's ``trial`` also reserves its own process's CPUs when that
    process serves a share (``driver_serves``)."""
    from fedsweep.core.errors import ConfigError

    workers, num_cpus, num_gpus = int(node["workers"]), float(node.get("num_cpus", 1)), float(node.get("num_gpus", 0) or 0)
    lanes = workers + (1 if trial and workers and node.get("driver_serves") is True else 0)
    if workers and lanes * num_cpus > cpus:
        asked = f"runtime.workers={workers}" + (" and the trial's own share (runtime.driver_serves)" if lanes > workers else "")
        raise ConfigError(f"{asked} x runtime.num_cpus={num_cpus:g} asks for {lanes * num_cpus:g} CPUs, "
                          f"{where} has {cpus:g}")  # fmt: skip
    if workers and num_gpus > 0 and workers * num_gpus > gpus + 1e-9:
        raise ConfigError(f"runtime.workers={workers} x runtime.num_gpus={num_gpus:g} asks for {workers * num_gpus:g} GPUs, "
                          f"{where} has {gpus:g}")  # fmt: skip


def local_resources() -> tuple[float, float]:
    """The CPUs and GPUs a Ray started on this machine will have (as Ray counts them)."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        gpus = 0
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip()]))
    return float(cpus), float(gpus)
