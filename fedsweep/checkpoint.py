"""Save and restore a run between rounds: method state, counters and RNG states.

A run restarted from a checkpoint continues with identical metrics. The server
optimizer is rebuilt for every argmin solve and clients keep no state between
requests, so nothing else needs saving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fedsweep.methods.base import MethodState
from fedsweep.metrics import TargetTracker
from fedsweep.oracle import CommStats

FILENAME = "checkpoint.pt"
DIRNAME = "checkpoint"  # log_dir/checkpoint/checkpoint.pt: a directory Ray Tune can persist as is


def save_checkpoint(path: Path, *, rnd: int, state: MethodState, comm: CommStats, tracker: TargetTracker) -> Path:
    """Write atomically (a stopped run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "round": rnd,
        "method": state.state_dict(),
        "comm": {
            "rounds": dict(comm.rounds),
            "messages": comm.messages,
            "bytes_sent": comm.bytes_sent,
            "bytes_received": comm.bytes_received,
        },
        "target": dict(tracker.reached),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)


def restore(payload: dict[str, Any], comm: CommStats, tracker: TargetTracker) -> tuple[int, MethodState]:
    """Put counters and RNGs back; return the checkpoint's round and method state."""
    comm.rounds = dict(payload["comm"]["rounds"])
    comm.messages = payload["comm"]["messages"]
    comm.bytes_sent = payload["comm"]["bytes_sent"]
    comm.bytes_received = payload["comm"]["bytes_received"]
    tracker.reached = dict(payload["target"])
    torch.set_rng_state(payload["torch_rng"])
    return payload["round"], MethodState.from_state_dict(payload["method"])
