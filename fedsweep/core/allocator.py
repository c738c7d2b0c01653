"""The C allocator of a process that computes: freed tensor memory kept for the next op.

glibc's malloc serves blocks above its mmap threshold (128 KB, raised as large blocks are
freed, up to 32 MB) with ``mmap`` and returns the top of its heaps to the system above its
trim threshold; a forward pass whose activations are a few MB then gets fresh pages every
time, and each fresh page is a fault (threads of one process take them in turn). Evaluating
``cifar_cnn`` on 2,000 images in pieces of 64 measured 0.44–0.48 s with glibc's defaults against
0.24–0.29 s with the settings below, on torch's 2 threads, and 0.30–0.31 s against 0.25 s on two
Python threads of one torch thread each; the process's peak RSS did not grow (730–770 MB in
both). Training on minibatches of 10 showed no difference beyond the noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to this size come from the heap (glibc's maximum for its dynamic threshold)."""
TRIM_THRESHOLD = 64 * 2**20
"""Free memory at the top of a heap kept for reuse up to this size (glibc: twice the mmap threshold)."""

ARENAS = 2
"""At most this many malloc arenas (glibc: 8 per core): each thread that allocates while another
holds an arena gets one of its own, which keeps freed memory of its own (the driver's evaluation
threads). ``bench/realistic.py --shape ten``, ``runtime=ray``, 3 interleaved pairs: peak PSS
1.65 GB against 1.73-1.75 GB without the limit, rounds 1.38-1.60 s against 1.45-1.50 s."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h
_done = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process, once; False where the C library is not glibc
    (then nothing changes)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    _done = all(mallopt(option, value) for option, value in
                ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENAS)))
    return _done
