"""A process and its descendants, read from /proc: memory (PSS) and CPU time, for the benchmarks.

PSS (``/proc/<pid>/smaps_rollup``) shares each page among the processes that map it, so the
sum over a tree counts torch's libraries and Ray's object store once, where RSS would count
them once per process. No torch here: the benchmarks' parent process stays light.
"""

from __future__ import annotations

import os
import threading

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0  # the process ended meanwhile


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far; 0 if it ended."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def command(pid: int) -> str:
    """The process's command line (Ray's workers rename theirs ``ray::<actor>``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class PeakPss:
    """Samples the PSS summed over ``root``'s tree every ``every`` seconds on a thread, until
    ``stop()``; ``peak_gb`` is the largest sum seen."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        self.root, self.every, self.peak_kb = root, every, 0
        self.at_peak: list[tuple[str, int]] = []  # (command, PSS kB) of each process at the peak
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            each = [(pid, pss_kb(pid)) for pid in descendants(self.root)]
            total = sum(kb for _, kb in each)
            if total > self.peak_kb:
                self.peak_kb = total
                self.at_peak = sorted(((command(pid)[:60], kb) for pid, kb in each if kb), key=lambda x: -x[1])
            self._done.wait(self.every)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_gb

    @property
    def peak_gb(self) -> float:
        return self.peak_kb / 2**20


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds so far of every process of ``root``'s tree, by pid."""
    return {pid: cpu_seconds(pid) for pid in descendants(root)}
