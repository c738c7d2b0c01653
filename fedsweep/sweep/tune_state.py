"""A sweep on a disk that fills up: stopped at the first write that fails, its state kept whole,
resumed once space is freed.

Ray Tune copies its experiment state (``experiment_state-*.json``: every trial, its config
and its checkpoints; ``basic-variant-state-*.json``: how far the grid search got) into the
sweep's folder without a temporary file: a full disk leaves them cut short, and a resumed Tune that cannot read it starts the experiment anew from a broken
search state (``KeyError: 'runtime'``, Ray 2.60). :class:`DiskGuard` keeps a whole copy of the
newest readable state beside it, and :func:`repair_state` puts that copy back before a resume.
It also holds a little space in reserve (``.reserve``, :data:`RESERVE` bytes) and frees it at the
first disk error, so that Tune's own last save of its state on the way out has room to land whole.
The guard also stops the sweep at the first disk error (a trial's, or the driver's own) the
way Ctrl-C does, Tune's graceful stop (SIGUSR1): trials keep their checkpoints, and running
the same command again continues them.
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray.tune import Callback

from fedsweep.core.disk import CAUSES, DiskError, cause

STATES = ("experiment_state-*.json", "basic-variant-state-*.json")  # the trials; the grid search's position
# (the second is a cloudpickle despite its name: checked whole by its opcodes, never unpickled)
WHOLE = ".whole-"  # prefix of the kept copy of a state file, in the sweep's folder
RESERVE = 256 * 1024  # bytes held back for Tune's last save of its state (a few KB per trial)
_DISK_TEXT = re.compile("|".join(re.escape(text) for text in ("No space left on device", "Read-only file system",
                                                              "Disk quota exceeded", *CAUSES.values())), re.I)  # fmt: skip
_PATH = re.compile(r"cannot write (\S+): ")
_LINE = re.compile(r"cannot write \S+: [^\n;]+")


def disk_cause(err: BaseException | None, folder: Path | str = "the sweep folder") -> str | None:
    """One line when ``err`` (a trial's error as Tune passes it, or the driver's) comes from a
    disk that is full or read-only; None otherwise."""
    seen = 0
    while err is not None and seen < 8:  # the error, what it wraps (Ray's task errors) and its context
        if isinstance(err, DiskError):  # Ray's task error wrapping one is one too: its text is a traceback
            line = _LINE.search(str(err))
            return line.group(0) if line else str(err).strip().splitlines()[-1]
        if isinstance(err, OSError) and cause(err):
            return f"cannot write {err.filename or folder}: {cause(err)}"
        err, seen = getattr(err, "cause", None) or err.__cause__ or err.__context__, seen + 1
    return None


def disk_text(text: str, folder: Path) -> str | None:
    """The same, from an error's text (Ray passes some errors on as text only)."""
    found = _PATH.search(text)
    match = _DISK_TEXT.search(text)
    if not match:
        return None
    reason = match.group(0).lower()
    reason = next((c for c in CAUSES.values() if c.lower() == reason), reason)
    return f"cannot write {found.group(1) if found else folder}: {reason}"


class DiskGuard(Callback):
    """Keeps a whole copy of Tune's newest readable state, and stops the sweep (as Ctrl-C does)
    at the first disk error, remembered in :attr:`error`."""

    def __init__(self, exp_dir: Path) -> None:
        self.exp_dir = Path(exp_dir)
        self.error: str | None = None
        self._seen: dict[str, tuple[int, int]] = {}
        self.reserve = self.exp_dir / ".reserve"
        try:  # best effort: a disk already too full for it stops the sweep at its first write anyway
            with open(self.reserve, "wb") as fh:
                fh.write(b"\0" * RESERVE)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            self.release()

    def release(self) -> None:
        """Give the reserved space back (at the first disk error, and when the sweep ends)."""
        self.reserve.unlink(missing_ok=True)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        for path in (p for pattern in STATES for p in self.exp_dir.glob(pattern)):
            try:
                stat = path.stat()
            except OSError:
                continue
            if self._seen.get(path.name) == (stat.st_mtime_ns, stat.st_size):
                continue
            self._seen[path.name] = (stat.st_mtime_ns, stat.st_size)
            keep_whole(path)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def _check(self, trial) -> None:
        """The trial's last failure, from the text of its error file (the driver's own copy,
        read as text: nothing is unpickled)."""
        try:
            text = Path(trial.error_file).read_text(errors="replace").rsplit("Failure # ", 1)[-1]
        except (OSError, TypeError):
            return
        found = disk_text(text, self.exp_dir / str(trial))
        if found:
            self.stop(found)

    def stop(self, error: str) -> None:
        """Stop the sweep as Ctrl-C does (Tune's graceful stop), once."""
        if self.error is None:
            self.error = error
            self.release()  # room for Tune's last save of its state
            os.kill(os.getpid(), signal.SIGUSR1)


class QuietOnDisk(logging.Filter):
    """Ray's log lines about a disk error (a trial's, a failed sync of Tune's state) stop the
    sweep through ``guard`` and are not shown; once it stops, nor is anything else Ray says
    (the driver's one line says what happened, Tune's error files keep the details)."""

    def __init__(self, guard: DiskGuard) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        if self.guard.error is not None:
            return record.levelno < logging.WARNING
        err = record.exc_info[1] if record.exc_info else None
        found = disk_cause(err, self.guard.exp_dir) or disk_text(record.getMessage(), self.guard.exp_dir)
        if found is None and err is not None:
            found = disk_text(str(err), self.guard.exp_dir)
        if found is None:
            return True
        self.guard.stop(found)
        return False


@contextmanager
def quiet_on_disk(guard: DiskGuard) -> Iterator[None]:
    """:class:`QuietOnDisk` on the handlers of Ray's and the root logger within the block."""
    quiet = QuietOnDisk(guard)
    handlers = [*logging.getLogger("ray").handlers, *logging.getLogger().handlers]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def is_whole(path: Path, data: bytes) -> bool:
    """Whether a Tune state file's bytes are complete: JSON that parses, or a pickle whose opcodes
    run to its STOP (read by ``pickletools``, which executes nothing)."""
    try:
        if path.name.startswith("basic-variant-state-"):
            ops = list(pickletools.genops(data))
            return bool(ops) and ops[-1][0].name == "STOP"
        json.loads(data)
        return True
    except Exception:  # noqa: BLE001 - any parse failure: a file cut short
        return False


def keep_whole(path: Path) -> None:
    """Copy ``path`` (a Tune state file) to its ``.whole-`` copy if it is complete; a copy
    that cannot be written (the disk is full) leaves the previous one."""
    try:
        text = path.read_bytes()
    except OSError:
        return
    if not is_whole(path, text):
        return
    whole = path.with_name(WHOLE + path.name)
    tmp = whole.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, whole)
    except OSError:
        tmp.unlink(missing_ok=True)


def repair_state(exp_dir: Path) -> str | None:
    """Before a resume: a Tune state file that does not read as JSON (cut short by a full disk)
    is replaced by its whole copy; returns what was done, or None when nothing was needed. A
    damaged state without a whole copy stops in one line."""
    from fedsweep.core.errors import ConfigError

    repaired = []
    for path in sorted(p for pattern in STATES for p in exp_dir.glob(pattern)):
        if is_whole(path, path.read_bytes()):
            continue
        whole = path.with_name(WHOLE + path.name)
        if not whole.exists():
            raise ConfigError(f"Ray Tune's state {path} is damaged and no whole copy is kept; "
                              f"move {exp_dir} away to start the sweep anew")  # fmt: skip
        os.replace(path, path.with_name(path.name + ".damaged"))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(whole.read_bytes())
        os.replace(tmp, path)
        repaired.append(path.name)
    return f"Ray Tune's state {', '.join(repaired)} was cut short; resuming from its last whole copy" if repaired else None
