"""The processes a test started, read from /proc: which sockets they listen on, and stopping them by pid.

Tests find a Ray's processes by its private temp folder (in every Ray service's command
line) and by descent from the process that started it; they stop exactly those, never
with ``ray stop``, which would stop every Ray of the machine.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import time
from pathlib import Path

LISTEN = "0A"  # the TCP state in /proc/net/tcp{,6}


def _address(field: str) -> tuple[str, int]:
    """``0100007F:1F90`` (as /proc/net/tcp writes it: 32-bit words in host byte order) → ('127.0.0.1', 8080)."""
    ip_hex, port_hex = field.split(":")
    raw = bytes.fromhex(ip_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port_hex, 16)


def listening_by_inode() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket of the machine: its inode → (address, port)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                sockets[int(fields[9])] = _address(fields[1])
    return sockets


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def listening(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every socket the processes ``pids`` listen on."""
    sockets = listening_by_inode()
    found = []
    for pid in sorted(pids):
        for inode in socket_inodes(pid):
            if inode in sockets:
                found.append((pid, name(pid), *sockets[inode]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to 127.0.0.1
    return ip.is_loopback


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def is_descendant(pid: int, ancestor: int) -> bool:
    parents = _parents()
    while pid in parents and pid > 1:
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def with_in_command_line(text: str) -> set[int]:
    """Processes whose command line contains ``text`` (e.g. a Ray's private temp folder)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.add(int(entry))
    return found - {os.getpid()}


def stop(pids: set[int], *, grace: float = 5.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still alive after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.add(pid)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while alive and time.time() < deadline:
            alive = {pid for pid in alive if _running(pid)}
            time.sleep(0.1)
        pids = alive
        if not pids:
            return


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_left_under(folder: Path, *, wait: float = 10.0) -> set[int]:
    """The processes whose command line names ``folder`` (a Ray's private temp folder) still
    running after up to ``wait`` seconds; they are stopped and the folder removed, and the
    caller asserts the set is empty."""
    import shutil

    deadline = time.time() + wait
    while (left := with_in_command_line(str(folder))) and time.time() < deadline:
        time.sleep(0.2)
    stop(left)
    shutil.rmtree(folder, ignore_errors=True)
    return left
