"""Writing to disk: a folder checked writable before any work starts, and a write that fails
mid-run (a full disk, a file system remounted read-only) turned into one line naming the path
and the cause."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsweep.core.errors import ConfigError, RunError

CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "read-only (permission denied)",
    errno.EPERM: "read-only (operation not permitted)",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EISDIR: "a folder stands where a file should be",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}
"""The OSErrors of writing that the machine, not fedsweep, causes: one line each."""


class DiskError(RunError):
    """A write failed because of the disk (full, read-only, …); the message names the path."""


def cause(err: OSError) -> str | None:
    """The one-line cause of a failed write, or None when ``err`` is not a disk's fault."""
    return CAUSES.get(err.errno)


def disk_error(err: OSError, path: str | Path) -> DiskError | None:
    """A :class:`DiskError` naming the file (``err``'s own, else ``path``) and the cause; None
    when ``err`` is not a disk's fault."""
    reason = cause(err)
    if reason is None:
        return None
    return DiskError(f"cannot write {err.filename or path}: {reason}")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a disk's failure inside the block into a one-line :class:`DiskError` naming ``path``
    (or the file the error names)."""
    try:
        yield
    except DiskError:
        raise
    except OSError as err:
        error = disk_error(err, path)
        if error is None:
            raise
        raise error from None


def check_writable(folder: str | Path, what: str = "results") -> None:
    """Stop in one line (a :class:`ConfigError`) unless ``folder``, or the folder it would be
    made in, takes a file: it is a file, read-only, on a read-only or full file system. A
    temporary file is written there and removed; nothing else is."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"cannot write {what} to {folder}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".fedsweep-probe-", dir=existing)
        try:
            os.write(handle, b"probe\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write {what} to {folder}: {cause(err) or err.strerror or err}") from None
