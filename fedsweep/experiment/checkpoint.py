"""Save and restore a run between rounds: the method's state (a value: the iterate and whatever
else the method carries, such as SCAFFOLD's controls or a server optimizer's moments, saved
field by field without this module knowing the fields), the torch RNG, counters and the config.

A run restarted from a checkpoint continues with identical metrics. The server
optimizer is rebuilt for every argmin solve and clients keep no state between
requests, so nothing else needs saving. A run directory keeps its newest
``checkpoint.keep`` checkpoints, one folder per round (``checkpoints/round_000010/checkpoint.pt``).

A checkpoint holds only tensors and plain data (numbers, strings, lists, dicts) and is
read with ``torch.load(weights_only=True)``: a file that holds anything else, such as a
pickle that would run code, is refused before it can run. It carries the resolved config
it was made with; resuming under another config stops with one line naming the first key
that differs, except for keys that do not change the numbers (``SAFE_TO_CHANGE``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from fedsweep.core.checks import shown
from fedsweep.core.disk import writing
from fedsweep.core.errors import ConfigError

if TYPE_CHECKING:  # imported lazily: validation reads checkpoints before anything heavy loads
    from fedsweep.algorithms.protocols import MethodState
    from fedsweep.experiment.metrics import TargetTracker
    from fedsweep.federation.oracle import CommStats

S = TypeVar("S")

FILENAME = "checkpoint.pt"
DIRNAME = "checkpoints"  # log_dir/checkpoints/round_000010/checkpoint.pt:
ROUND_DIR = "round_{:06d}"  # one directory per checkpoint, which Ray Tune can persist as is
FORMAT = 3  # the payload's layout; 2 held a numpy generator's stream, 1 a pickled Weights
SAFE_TO_CHANGE = ("rounds", "log_dir", "checkpoint", "runtime", "target_accuracy", "plugins")
"""Top-level config keys a resumed run may change: how long it runs, where it writes, how
its clients are served (the pool agrees with in-process to 1e-6), what it reports and which
packages its targets may name."""

_KEYS = ("format", "round", "config", "state", "comm", "target", "torch_rng")


def checkpoint_path(log_dir: str | Path, rnd: int) -> Path:
    """Where a run in ``log_dir`` saves its checkpoint of round ``rnd``."""
    return Path(log_dir) / DIRNAME / ROUND_DIR.format(rnd) / FILENAME


def saved_rounds(log_dir: str | Path) -> list[int]:
    """The rounds of the checkpoints saved in ``log_dir``, oldest first."""
    found = (re.fullmatch(r"round_(\d+)", d.name) for d in (Path(log_dir) / DIRNAME).glob("round_*"))
    return sorted(int(m.group(1)) for m in found if m)


def save_checkpoint(
    log_dir: str | Path,
    *,
    keep: int,
    rnd: int,
    state: MethodState,
    comm: CommStats,
    tracker: TargetTracker,
    config: Mapping[str, Any],
) -> Path:
    """Write round ``rnd``'s checkpoint atomically (a stopped run never leaves half a file) to
    :func:`checkpoint_path`, then keep only the ``keep`` newest of ``log_dir``. Checkpoints of
    later rounds are dropped first: they belong to an earlier attempt that this (resumed)
    run replaces, as its logs do."""
    path = checkpoint_path(log_dir, rnd)
    payload = {
        "format": FORMAT,
        "round": rnd,
        "config": dict(config),
        "state": to_tree(state),
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
    with writing(path):  # a full disk: one line, the earlier checkpoints intact, no half file left
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            buffer = io.BytesIO()  # serialized first: a failed write is then an OSError, not torch's RuntimeError
            torch.save(payload, buffer)
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())  # on disk before it replaces anything
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            if not path.exists():  # no round folder without its checkpoint (saved_rounds lists folders)
                shutil.rmtree(path.parent, ignore_errors=True)
    saved = saved_rounds(log_dir)
    kept = [r for r in saved if r <= rnd][-keep:]
    for old in set(saved) - set(kept):
        shutil.rmtree(checkpoint_path(log_dir, old).parent, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, read safely; a one-line ConfigError naming the file if it is
    missing, unreadable, corrupt, truncated, not a fedsweep checkpoint or holds anything but
    tensors and plain data."""
    try:
        with warnings.catch_warnings():  # torch's warning about a file's pickle protocol: the line below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint {path} holds more than tensors and plain data; refused ({first[:160]})") from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for damaged files
        raise ConfigError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__})") from None
    if isinstance(payload, dict) and isinstance(payload.get("format"), int) and payload["format"] < FORMAT:
        raise ConfigError(f"checkpoint {path} was made by an earlier fedsweep (format {payload['format']}, now {FORMAT}); start the run anew")
    if not isinstance(payload, dict) or any(key not in payload for key in _KEYS) or payload["format"] != FORMAT:
        raise ConfigError(f"{path} is not a fedsweep checkpoint (format {FORMAT})")
    return payload


def check_config(payload: Mapping[str, Any], config: Mapping[str, Any], path: str | Path) -> None:
    """A one-line ConfigError naming the first key, outside ``SAFE_TO_CHANGE``, whose value
    differs between the checkpoint's config and ``config``."""
    old = {k: v for k, v in _flat(payload["config"]).items() if k.split(".")[0] not in SAFE_TO_CHANGE}
    new = {k: v for k, v in _flat(config).items() if k.split(".")[0] not in SAFE_TO_CHANGE}
    for key in [*old, *(k for k in new if k not in old)]:  # config order: a group's name comes first
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            raise ConfigError(
                f"checkpoint {path} was made with {key}={shown(old.get(key, '<absent>'))}, this run has "
                f"{key}={shown(new.get(key, '<absent>'))}; resume with the checkpoint's config "
                f"(only {', '.join(SAFE_TO_CHANGE)} and their keys may change)"
            )


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def restore(payload: dict[str, Any], template: S, comm: CommStats, tracker: TargetTracker) -> tuple[int, S]:
    """Put counters and the torch RNG back; return the checkpoint's round and the method's state,
    rebuilt on ``template`` (the method's ``init`` for this run: its structure, device and dtypes)."""
    comm.rounds = dict(payload["comm"]["rounds"])
    comm.messages = payload["comm"]["messages"]
    comm.bytes_sent = payload["comm"]["bytes_sent"]
    comm.bytes_received = payload["comm"]["bytes_received"]
    tracker.reached = dict(payload["target"])
    torch.set_rng_state(payload["torch_rng"])
    return payload["round"], from_tree(template, payload["state"])


def to_tree(value: Any) -> Any:
    """A state as tensors and plain data: dataclasses and mappings as dicts, ``Weights`` as
    name → tensor (on the CPU), numbers and strings as they are."""
    from fedsweep.core.weights import Weights

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_tree(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Weights):
        return {name: t.detach().cpu().clone() for name, t in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {key: to_tree(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_tree(v) for v in value]
    return value


def from_tree(template: Any, tree: Any) -> Any:
    """The inverse of :func:`to_tree`, shaped by ``template``: its dataclasses, ``Weights`` (on its
    device and dtype) and tensors; a mapping's entries the template lacks come back as saved."""
    from fedsweep.core.weights import Weights

    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        return dataclasses.replace(
            template, **{f.name: from_tree(getattr(template, f.name), tree[f.name]) for f in dataclasses.fields(template) if f.init}
        )
    if isinstance(template, Weights):
        return Weights(tree).to(template.device, template.dtype).clone()
    if isinstance(template, torch.Tensor):
        return tree.to(template.device, template.dtype)
    if isinstance(template, Mapping) or (template is None and isinstance(tree, Mapping)):
        template = template or {}
        return {key: from_tree(template.get(key), value) for key, value in tree.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(from_tree(t, v) for t, v in zip(template, tree))
    return tree
