"""The local Ray that ``fedsweep ray start`` keeps running between commands: its state file and
whether that Ray is still alive. No ray import (``local_ray`` starts and stops it; ``ray_start``
joins it).

The state file (``~/.cache/fedsweep/ray.json``, mode 600; its folder is ``$FEDSWEEP_STATE_DIR``
when set, else ``$XDG_CACHE_HOME/fedsweep``) records the Ray's GCS address, its private temp
folder (named in the command line of every Ray service it runs), the GCS server's pid, the
authentication mode and the owner. A file whose Ray has died is removed with a one-line note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

STATE_ENV = "FEDSWEEP_STATE_DIR"
ALIVE_SECONDS = 1.0
"""How long the GCS port of a kept Ray may take to accept a connection (it is on this machine)."""


def state_path() -> Path:
    """Where the kept Ray's state is written."""
    folder = os.environ.get(STATE_ENV)
    if not folder:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = os.path.join(cache, "fedsweep")
    return Path(folder) / "ray.json"


def write_state(state: dict) -> Path:
    """Write ``state`` atomically, readable by its owner only (it names a Ray that runs code)."""
    path = state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=1)
    os.replace(partial, path)
    return path


def read_state() -> dict | None:
    """The state file's contents; None without one (or with one that is not ours to read)."""
    try:
        state = json.loads(state_path().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or cut short: dead by definition
    return state if isinstance(state, dict) else {}


def remove_state() -> None:
    state_path().unlink(missing_ok=True)


def process_alive(pid: int, marker: str) -> bool:
    """Process ``pid`` runs (not a zombie) and its command line names ``marker`` (so a pid that
    the system gave to another process since is not taken for the Ray's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and marker in command


def is_alive(state: dict) -> bool:
    """The kept Ray's GCS server still runs and accepts connections at its address."""
    try:
        host, port = state["address"].rsplit(":", 1)
        if state.get("uid") != os.getuid() or not process_alive(int(state["gcs_pid"]), state["temp_dir"]):
            return False
        with socket.create_connection((host, int(port)), timeout=ALIVE_SECONDS):
            return True
    except (KeyError, TypeError, ValueError, OSError):
        return False


def running_ray(*, note: bool = True) -> dict | None:
    """The state of the Ray that ``fedsweep ray start`` keeps, if it is alive; a stale state file
    (that Ray died, e.g. with the machine) is removed with a one-line note on stderr."""
    state = read_state()
    if state is None:
        return None
    if is_alive(state):
        return state
    remove_state()
    if note:
        where = state.get("address", "?") if state else "?"
        print(f"note: the local Ray of `fedsweep ray start` ({where}) is no longer running; "
              f"removed its state file {state_path()}", file=sys.stderr)  # fmt: skip
    return None
