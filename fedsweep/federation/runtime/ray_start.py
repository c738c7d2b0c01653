"""Starting Ray for fedsweep: a single-machine Ray on the loopback interface, or a cluster joined.

``init_ray`` is the one ``ray.init`` of runs and sweeps; ``ray_session`` gives a run a Ray
for its duration. No torch here.

Starting Ray while the driver checks its config was tried and dropped: ``ray.init`` on
a thread hangs the driver's first call once that thread has ended (Ray 2.60), and with
``ray.init`` on the main thread and the check (torch's import) on another, start-up fell
from 5.6–6.8 s to 5.2–5.6 s (``bench/scale.py``, K = 4) while a bad value was reported
only after Ray had started and stopped again (5 s, amid Ray's log lines, instead of 1.5 s
and one line).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from fedsweep.core.errors import RunError

INLINE_BYTES = 1 << 20
"""Objects up to this size travel inside their call, not through the object store (in a Ray
that fedsweep starts): a small model's request and replies then skip the store's IPC, which
measured ~2.6 → ~1.4 ms of overhead per worker call here."""


LOOPBACK = "127.0.0.1"


def init_ray(address: str | None, *, dashboard: bool, trial_output: bool = False):
    """``ray.init`` for fedsweep runs and sweeps. Joining a cluster (``address``, or Ray's
    ``RAY_ADDRESS``) keeps the cluster's settings. A new local Ray is a single-machine Ray:
    every service of it (GCS, raylet, object manager, workers, agents, dashboard) listens on
    127.0.0.1 only, and it passes objects up to ``INLINE_BYTES`` inline.

    Workers' output stays off the terminal, unless ``trial_output``: then what a sweep's trials
    print reaches the driver's terminal (each line carries the trial's short name, see
    ``fedsweep.sweep.trial_output``; ``fedsweep.sweep.driver`` turns off Ray's ``(name pid=…)`` prefix and
    its merging of similar lines before Ray is imported)."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        return ray.init(address=address, include_dashboard=dashboard, log_to_driver=trial_output)
    with _single_machine():
        context = ray.init(
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            log_to_driver=trial_output,
            _node_ip_address=LOOPBACK,
            _system_config={"max_direct_call_object_size": INLINE_BYTES},
        )
    if ray.util.get_node_ip_address() != LOOPBACK:  # a Ray that no longer honours the switch
        ray.shutdown()
        raise RunError(f"Ray did not start on {LOOPBACK}; refusing to run with its services on other interfaces")
    return context


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's switch for a Ray that is no cluster (the default on macOS and Windows, set by
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which Ray reads once at import): the node's
    address is then the loopback one, and every Ray service binds to the node's address.
    Ray resolves ``_node_ip_address="127.0.0.1"`` to the machine's address without it."""
    from ray._private import ray_constants  # ray is pinned (pyproject.toml): this switch is checked by a test

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def ray_session(address: str | None, *, dashboard: bool) -> Iterator[None]:
    """Ray for one run: the one already running (left running), else a new one, stopped at
    the end. Prints the dashboard's address."""
    import ray

    if ray.is_initialized():
        yield
        return
    context = init_ray(address, dashboard=dashboard)
    try:
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}")
        yield
    finally:
        ray.shutdown()
