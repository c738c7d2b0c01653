"""Where tensors live: the one device choice of fedsweep."""

from __future__ import annotations

import torch

from fedsweep.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present, else cpu; a CUDA device this machine lacks is a one-line
    ConfigError (torch's own error comes at the first tensor moved, as a traceback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name} but torch finds no CUDA device here; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name} but this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return device
