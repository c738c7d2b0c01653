"""A local Ray kept running between commands (``fedsweep ray start`` / ``status`` / ``stop``).

``start`` runs Ray's own ``ray start --head`` with the rules of the Ray that a run starts for
itself (``ray_start.init_ray``): every service on 127.0.0.1 (``--node-ip-address`` with Ray's
single-machine switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``--dashboard-host``), objects up
to ``INLINE_BYTES`` inline (``--system-config``), token authentication on unless
``RAY_AUTH_MODE`` says otherwise (a token is created in Ray's default place,
``~/.ray/auth_token``, when none exists, as ``ray.init`` does), usage statistics off. Its
services run in a private temp folder, which their command lines name: ``stop`` ends exactly
those processes and their children (workers, agents) by pid, never with ``ray stop``, which
would end every Ray of the machine. Linux (``/proc``) only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedsweep.core.errors import RunError
from fedsweep.federation.runtime.ray_start import LOOPBACK, SYSTEM_CONFIG, free_port
from fedsweep.federation.runtime.ray_state import (
    process_alive,
    read_state,
    remove_state,
    running_ray,
    state_path,
    write_state,
)

START_SECONDS = 120.0
"""``ray start --head`` took 17 s on this 2-core machine under load 4.5; beyond this it failed."""
STOP_GRACE = 10.0
"""Seconds Ray's processes get to exit on SIGTERM before SIGKILL (as ``ray stop``'s grace)."""


def start(*, num_cpus: float | None = None, dashboard: bool = False, object_store_memory: int | None = None,
          workers: int | str = "auto") -> dict:  # fmt: skip
    """Start the kept Ray (or return the one already running) and write its state file; then start
    its ``workers`` warm workers (``fedsweep.federation.runtime.warm``; ``auto``: as many as a run's
    default pool has, none where that pool uses GPUs)."""
    kept = running_ray()
    if kept is not None:
        return {**kept, "already": True}
    count = warm_count(workers, num_cpus)
    # not Ray's fixed ports (8265, 52365, 10001): another Ray of the machine may hold them
    port, dashboard_port, agent_port, client_port = free_port(), free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="fedsweep-ray-")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    auth = env.setdefault("RAY_AUTH_MODE", "token").lower()
    if auth == "token":
        _ensure_token(env)
    command = [
        sys.executable, "-m", "fedsweep.federation.runtime.ray_start", "start", "--head",  # Ray's `ray start`, lean
        f"--node-ip-address={LOOPBACK}", f"--port={port}", f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={agent_port}",
        f"--include-dashboard={str(dashboard).lower()}",
        f"--ray-client-server-port={client_port}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--system-config={json.dumps(SYSTEM_CONFIG)}",
        *([f"--num-cpus={num_cpus:g}"] if num_cpus is not None else []),
        *([f"--object-store-memory={object_store_memory}"] if object_store_memory else []),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=START_SECONDS)
    except subprocess.TimeoutExpired:
        _end(temp_dir, f"{LOOPBACK}:{port}")
        raise RunError(f"`ray start --head` did not finish within {START_SECONDS:g} s; stopped what it started") from None
    pids = processes(temp_dir, f"{LOOPBACK}:{port}")
    gcs = [pid for pid in pids if _name(pid) == "gcs_server"]
    if done.returncode != 0 or not gcs:
        _end(temp_dir, f"{LOOPBACK}:{port}")
        lines = [line for line in (done.stderr + done.stdout).splitlines() if "error" in line.lower()]
        last = lines[-1].strip()[:300] if lines else f"exit code {done.returncode}"
        raise RunError(f"`ray start --head` failed: {last}")
    state = {
        "address": f"{LOOPBACK}:{port}",
        "temp_dir": temp_dir,
        "session_dir": os.path.realpath(os.path.join(temp_dir, "session_latest")),
        "gcs_pid": gcs[0],
        "pids": sorted(pids),
        "auth": auth,
        "dashboard_url": f"{LOOPBACK}:{dashboard_port}" if dashboard else None,
        "num_cpus": num_cpus,
        "uid": os.getuid(),
        "owner": _user(),
        "python": sys.executable,
        "started": time.time(),
    }
    write_state(state)
    if count:
        try:
            _start_warm(count)
        except BaseException:
            stop()
            raise
    state["warm"] = count
    write_state(state)
    return state


def warm_count(workers: int | str, num_cpus: float | None) -> int:
    """How many warm workers ``fedsweep ray start --workers`` starts (one line for a bad value)."""
    from fedsweep.core.checks import check
    from fedsweep.federation.runtime.resources import local_resources, resolve

    if workers != "auto":
        check("--workers", workers, "int >= 0")
        return int(workers)
    cpus, gpus = local_resources()
    pool = resolve({"workers": "auto", "num_cpus": 1.0, "num_gpus": "auto"}, cpus=cpus if num_cpus is None else num_cpus,
                   gpus=gpus)  # fmt: skip
    return 0 if pool["num_gpus"] else pool["workers"]


def _start_warm(count: int) -> None:
    """Start the kept Ray's warm workers and wait until they have imported torch, from a process
    of their own (``python -m fedsweep.federation.runtime.warm``: this one may have joined another Ray)."""
    command = [sys.executable, "-m", "fedsweep.federation.runtime.warm", str(count)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_SECONDS)
    except subprocess.TimeoutExpired:
        raise RunError(f"{count} warm workers not started within {START_SECONDS:g} s "
                       "(`fedsweep ray start --workers 0` starts none)") from None  # fmt: skip
    if done.returncode != 0:
        lines = (done.stderr.strip() or f"exit code {done.returncode}").splitlines()
        raise RunError(f"warm workers not started: {lines[-1][:300]} (`fedsweep ray start --workers 0` starts none)")


def stop() -> tuple[dict | None, int]:
    """Stop the kept Ray: SIGTERM to each of its processes, SIGKILL to those alive after
    ``STOP_GRACE`` s; remove its temp folder and state file. Returns (its state, how many
    processes were stopped); (None, 0) when no Ray is kept."""
    state = read_state()
    if state is None:
        return None, 0
    temp_dir = state.get("temp_dir")
    count = _end(temp_dir, state.get("address")) if temp_dir and Path(temp_dir).name.startswith("fedsweep-ray-") else 0
    remove_state()
    return state, count


def status() -> dict | None:
    """The kept Ray's state with its live processes, or None (a stale file is removed with a note)."""
    state = running_ray()
    return None if state is None else {**state, "pids": sorted(processes(state["temp_dir"], state["address"]))}


def processes(temp_dir: str, address: str | None = None) -> set[int]:
    """The Ray's processes: those whose command line names its temp folder (GCS server, raylet,
    dashboard, monitors) or its GCS ``address`` (its Ray Client server, whose parent, ``ray
    start``, has exited), and their descendants (workers and agents, which rename themselves)."""
    named, parents = set(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if process_alive(pid, temp_dir) or (address and process_alive(pid, f"--address={address}")):
            named.add(pid)
    found, frontier = set(named), set(named)
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found - {os.getpid()}


def _end(temp_dir: str, address: str | None = None) -> int:
    """Stop the processes of the Ray in ``temp_dir`` by pid, then remove the folder; how many
    there were. A process that outlives SIGKILL (none seen) is named in a :class:`RunError`."""
    pids = started = processes(temp_dir, address)
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = {pid for pid in pids if _running(pid)}
        if not pids:
            break
    if pids:
        raise RunError(f"Ray's processes {sorted(pids)} outlived SIGKILL; its folder {temp_dir} is kept")
    shutil.rmtree(temp_dir, ignore_errors=True)
    return len(started)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _ensure_token(env: dict[str, str]) -> None:
    """A token for token authentication where Ray looks for one (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``), created (mode 600) when missing."""
    if env.get("RAY_AUTH_TOKEN") or (env.get("RAY_AUTH_TOKEN_PATH") and Path(env["RAY_AUTH_TOKEN_PATH"]).is_file()):
        return
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file():
        return
    import secrets

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))  # what Ray's own generator writes


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def describe(state: dict) -> str:
    """The kept Ray in a few lines (``fedsweep ray start`` and ``status``)."""
    up = time.time() - state.get("started", time.time())
    lines = [
        (f"local Ray at {state['address']} (owner {state.get('owner')}, up {up / 60:.0f} min, "
         f"authentication {state.get('auth')}, {len(state.get('pids', []))} processes)"),
        f"  session: {state.get('session_dir')}",
        f"  state file: {state_path()}",
    ]
    if state.get("warm"):
        lines.append(f"  warm workers: {state['warm']}, ready for runs (`fedsweep ray start --workers N` sets how many)")
    if state.get("dashboard_url"):
        lines.append(f"  Ray dashboard: http://{state['dashboard_url']}")
    return "\n".join(lines)
