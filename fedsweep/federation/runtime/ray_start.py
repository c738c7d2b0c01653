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

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fedsweep.core.errors import ConfigError, RunError

INLINE_BYTES = 1 << 20
"""Objects up to this size travel inside their call, not through the object store (in a Ray
that fedsweep starts): a small model's request and replies then skip the store's IPC, which
measured ~2.6 → ~1.4 ms of overhead per worker call here."""


SYSTEM_CONFIG = {"max_direct_call_object_size": INLINE_BYTES, "prestart_worker_first_driver": False}
"""Ray's system config for a Ray fedsweep starts (a run's, a sweep's, the one ``fedsweep ray
start`` keeps): objects up to ``INLINE_BYTES`` inline, and no idle worker processes started
ahead of the first actor (one per CPU, of which a pool of one worker left one idle, 48 MB of
PSS; start-up measured alike)."""


LOOPBACK = "127.0.0.1"


def init_ray(address: str | None, *, dashboard: bool, trial_output: bool = False):
    """``ray.init`` for fedsweep runs and sweeps. Joining a cluster (``address``, or Ray's
    ``RAY_ADDRESS``) keeps the cluster's settings. Otherwise the local Ray that ``fedsweep ray
    start`` keeps running (``local_ray``) is joined when there is one. A new local Ray is a single-machine Ray:
    every service of it (GCS, raylet, object manager, workers, agents, dashboard) listens on
    127.0.0.1 only, with :data:`SYSTEM_CONFIG`.

    Workers' output stays off the terminal, unless ``trial_output``: then what a sweep's trials
    print reaches the driver's terminal (each line carries the trial's short name, see
    ``fedsweep.sweep.trial_output``; ``fedsweep.sweep.driver`` turns off Ray's ``(name pid=…)`` prefix and
    its merging of similar lines before Ray is imported)."""
    if address or os.environ.get("RAY_ADDRESS"):
        given = address or os.environ["RAY_ADDRESS"]
        where = f"--address/runtime.address={address}" if address else f"RAY_ADDRESS={given}"
        probe_address(given, where)  # one line within PROBE_SECONDS, not Ray's reconnect loop
        import ray

        try:
            with _keep_sigterm():
                return ray.init(address=address, include_dashboard=dashboard, log_to_driver=trial_output,
                                logging_level=logging.WARNING)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RunError(f"cannot join the Ray cluster at {where}: {first[:200]}") from None
    from fedsweep.federation.runtime.ray_state import running_ray

    kept = running_ray()  # the local Ray of `fedsweep ray start`, if alive
    if kept is not None:
        return _join_kept(kept, dashboard=dashboard, trial_output=trial_output)
    import ray

    if "RAY_AUTH_MODE" not in os.environ:  # token authentication, chosen (Ray's default, without its warning)
        _auth_mode("token")
    with _single_machine(), _lean(agent_port=free_port(), log_monitor=trial_output, dashboard=dashboard), _keep_sigterm():
        context = ray.init(
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            log_to_driver=trial_output,
            logging_level=logging.WARNING,  # not Ray's start-up lines around fedsweep's own
            _node_ip_address=LOOPBACK,
            _system_config=SYSTEM_CONFIG,
        )
    if ray.util.get_node_ip_address() != LOOPBACK:  # a Ray that no longer honours the switch
        ray.shutdown()
        raise RunError(f"Ray did not start on {LOOPBACK}; refusing to run with its services on other interfaces")
    return context


def _join_kept(kept: dict, *, dashboard: bool, trial_output: bool, say: bool = True):
    """Join the local Ray that ``fedsweep ray start`` keeps (``local_ray``): on loopback, with its
    authentication mode (Ray enables token authentication only for a Ray it finds itself, not
    for an address given, and reads the mode once: it is refreshed here)."""
    import ray

    if kept.get("auth") == "token" and "RAY_AUTH_MODE" not in os.environ:
        _auth_mode("token")
    if say:
        print(f"Ray: the local Ray of `fedsweep ray start` at {kept['address']}")
    try:
        with _single_machine(), _keep_sigterm():
            return ray.init(address=kept["address"], include_dashboard=dashboard, log_to_driver=trial_output,
                            logging_level=logging.WARNING)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"cannot join the local Ray of `fedsweep ray start` at {kept['address']}: {first[:200]} "
                       "(`fedsweep ray stop` ends it)") from None  # fmt: skip


def _auth_mode(mode: str) -> None:
    """Set Ray's ``RAY_AUTH_MODE`` for this process and the Ray it starts or joins (Ray reads
    it once, at import: its config is read again)."""
    from ray._raylet import Config  # ray is pinned (pyproject.toml)

    os.environ["RAY_AUTH_MODE"] = mode
    Config.initialize("")


PROBE_SECONDS = 5.0
"""How long a cluster's address may take to accept a connection before the run stops."""


def parse_address(address: str, where: str) -> tuple[str, int] | None:
    """``host:port`` (``ray://host:port`` for Ray Client; ``[v6]:port``) as (host, port); None
    for ``auto`` (the Ray running on this machine, which Ray finds itself). A one-line
    :class:`ConfigError` for anything else."""
    text = address.strip()
    if text == "auto":
        return None
    bare = text.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in bare:
        raise ConfigError(f"{where} is not a Ray address: give host:port (e.g. 10.0.0.5:6379), ray://host:port or auto")
    return host, int(port)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, and
Ray Client's server) answers with a SETTINGS frame of its own before any call or authentication."""


def probe_address(address: str, where: str, *, timeout: float = PROBE_SECONDS) -> None:
    """Stop in one line unless a gRPC server answers at ``address`` within ``timeout`` seconds
    (Ray's own ``ray.init`` retries for minutes, at a closed port and at one where something
    else listens). Under ``RAY_USE_TLS`` only the connection is checked (the handshake is TLS)."""
    parsed = parse_address(address, where)
    if parsed is None:
        return
    host, port = parsed
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "", "false"):
                connection.sendall(HTTP2_PREFACE)
                reply = _read(connection, 9)  # a frame header: length (3 bytes), type, flags, stream id
                if len(reply) < 9 or reply[3] != 4:
                    raise RunError(f"cannot join the Ray cluster at {where}: {host}:{port} answers, but not as Ray's "
                                   "GCS (no gRPC reply); give the head node's GCS port (6379 by default)")  # fmt: skip
    except socket.gaierror as err:
        raise RunError(f"cannot reach the Ray cluster at {where}: unknown host {host!r} ({err.strerror})") from None
    except TimeoutError:
        raise RunError(f"cannot reach the Ray cluster at {where}: no answer from {host}:{port} within {timeout:g} s") from None
    except OSError as err:
        raise RunError(f"cannot reach the Ray cluster at {where}: {err.strerror or err} ({host}:{port})") from None


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:  # closed by the other side
            break
        data += chunk
    return data


@contextmanager
def _keep_sigterm() -> Iterator[None]:
    """Ray's driver installs its own SIGTERM handler (it aborts the process, Ray 2.60): keep the
    caller's, which stops a run as Ctrl-C does (``fedsweep.cli``) and so shuts this Ray down.
    Ray's is not installed at all while ``ray.init`` runs: a SIGTERM then ended the command with
    exit code 15 and no word, where it now stops it as at any other moment."""
    from ray._private import utils as ray_utils  # ray is pinned (pyproject.toml)

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    install = ray_utils.set_sigterm_handler
    if callable(before):
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = install
        if callable(before):
            signal.signal(signal.SIGTERM, before)


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


def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextmanager
def _lean(*, agent_port: int, log_monitor: bool, dashboard: bool) -> Iterator[None]:
    """The Ray that ``ray.init`` starts here, without what a single-machine run does not use.

    * Its dashboard agent listens on ``agent_port``, not on Ray's fixed default 52365: where
      another Ray of the machine holds 52365 (a sweep, a kept Ray), the agent retried for 3.4 s
      and the raylet waited for it (a new Ray's start measured 6.5 s against 2.6 s).
    * No log monitor unless workers' output reaches the driver (``log_monitor``); no autoscaler
      monitor and no API server (Ray's ``dashboard.py``, which without the dashboard serves job
      submission and the state API, neither used by a run or a sweep) unless the dashboard
      shows the cluster (``dashboard``). Without the monitors, an idle Ray's processes measured
      398 MB of PSS against 493 MB; the API server held 79 MB more.

    ``ray.init`` takes none of these (``ray start`` does: ``--dashboard-agent-listen-port``); its
    parameters' defaults, and the head's start of its API server, are replaced for this start."""
    from ray._private import parameter  # ray is pinned (pyproject.toml): tested by test_ray_clusters

    init = parameter.RayParams.__init__

    def lean(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", agent_port)
        kwargs.setdefault("include_log_monitor", log_monitor)
        kwargs.setdefault("no_monitor", not dashboard)
        init(self, *args, **kwargs)

    parameter.RayParams.__init__ = lean
    try:
        with _api_server(dashboard):
            yield
    finally:
        parameter.RayParams.__init__ = init


@contextmanager
def _api_server(wanted: bool) -> Iterator[None]:
    """A head started here runs Ray's API server only when ``wanted`` (with the dashboard)."""
    from ray._private import node  # ray is pinned (pyproject.toml): tested by test_ray_clusters, test_local_ray

    start = node.Node.start_api_server
    if not wanted:
        node.Node.start_api_server = lambda self, **kwargs: None
    try:
        yield
    finally:
        node.Node.start_api_server = start


def ray_start_head() -> None:
    """Ray's own ``ray start`` (its arguments in ``sys.argv``, as ``python -m
    fedsweep.federation.runtime.ray_start start --head …``), whose head runs Ray's API server
    only with ``--include-dashboard=true``: the Ray ``fedsweep ray start`` keeps (``local_ray``)."""
    from ray.scripts.scripts import main

    with _api_server("--include-dashboard=true" in sys.argv):
        main()


if __name__ == "__main__":
    ray_start_head()


@contextmanager
def ray_session(address: str | None, *, dashboard: bool) -> Iterator[None]:
    """Ray for one run: the one already running (left running), else a new one, stopped at
    the end. Prints the dashboard's address."""
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        context = init_ray(address, dashboard=dashboard)  # stopped while it starts: what started is stopped
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}")
        yield
    finally:
        ray.shutdown()
