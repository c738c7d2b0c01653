"""Torch's threads: how many the caller computes on, and work spread over Python threads that
compute on one torch thread each.

Torch's intra-op threads gain little on small operations (a minibatch of 10 images, one
evaluation chunk) and spin while another process holds a core; threads that each take a share of
the work, on one torch thread, keep every core busy instead (figures in docs/performance.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch computes on ``threads`` threads inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_on_threads(fn: Callable[..., T], *iterables: Iterable, pool: ThreadPoolExecutor) -> list[T]:
    """``[fn(*args) for args in zip(*iterables)]`` on ``pool``'s threads, each computing on one
    torch thread, in order. Torch's setting is process-wide for its BLAS, so the caller's is put
    back after."""

    def one(*args: object) -> T:
        torch.set_num_threads(1)
        return fn(*args)

    before = torch.get_num_threads()
    try:
        return list(pool.map(one, *iterables))
    finally:
        torch.set_num_threads(before)


def import_meanwhile(module: str) -> None:
    """Import ``module`` on a thread of its own, while this one waits (for Ray, for workers); a
    later ``import`` of it waits for that thread. The driver of a Ray run imports
    ``torch._dynamo`` so: ``torch.optim``'s optimizers and ``torch.func`` import it at first use,
    0.75 s here, which its first round waited for."""
    import importlib
    import sys
    import threading

    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()
