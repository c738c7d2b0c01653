"""The run's own settings, beside its components: a dataclass schema with commented defaults.

Every key of ``config.yaml`` that is not a component (``data``, ``partition``, ``model``, ``loss``,
``method``, ``solver``, ``runtime``: checked against their targets' signatures) is a field here,
with its type and range; :func:`check_settings` checks a config against it in one pass, one line
naming the first bad key.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsweep.core.checks import check, shown
from fedsweep.core.errors import ConfigError


def rule(name: str, default: Any = None) -> Any:
    """A field checked by ``fedsweep.core.checks`` rule ``name``."""
    return field(default=default, metadata={"rule": name})


@dataclass(frozen=True)
class Seeds:
    data: int | None = rule("seed or null")  # the data split and the partition (null: seed)
    init: int | None = rule("seed or null")  # the model's initialisation
    method: int | None = rule("seed or null")  # the method's draws


@dataclass(frozen=True)
class ServerSettings:
    grad_batch_size: int | None = rule("int >= 1 or null")  # minibatch of the server's gradients; null: exact


@dataclass(frozen=True)
class ClientSettings:
    batch_size: int | None = rule("int >= 1 or null")  # minibatch of a client's gradient; null: its shard


@dataclass(frozen=True)
class SimilaritySettings:
    estimate: bool = rule("bool", False)  # measure δ_G at x0 by power iteration
    iterations: int = rule("int >= 1", 20)  # Hessian-vector products per group
    batch_size: int | None = rule("int >= 1 or null")  # null: exact Hessians


@dataclass(frozen=True)
class CheckpointSettings:
    every: int = rule("int >= 0", 0)  # save every N rounds (0: never)
    keep: int = rule("int >= 1", 2)  # the newest N are kept
    resume: str | None = None  # a checkpoint.pt to continue from


@dataclass(frozen=True)
class RunSettings:
    seed: int = rule("seed", 0)
    seeds: Seeds = field(default_factory=Seeds)
    rounds: int = rule("int >= 1", 30)
    device: str = "auto"  # auto | cpu | cuda[:N]
    server: ServerSettings = field(default_factory=ServerSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    target_accuracy: float | None = rule("(0, 1] or null", 0.9)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    log_dir: str | None = None
    plugins: list[str] = field(default_factory=list)  # packages whose classes _target_ may name (fedsweep.core.targets)


def check_settings(cfg: Mapping[str, Any], *, components: tuple[str, ...]) -> None:
    """ConfigError for the first key of ``cfg`` (besides ``components``) that is unknown, missing,
    of the wrong type or out of its range."""
    _check("", RunSettings, {k: v for k, v in cfg.items() if k not in components})
    device = cfg.get("device")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got device={shown(device)}")


def _check(prefix: str, schema: type, node: Any) -> None:
    from fedsweep.experiment.components import fits

    section = prefix.rstrip(".") or "the config"
    if not isinstance(node, Mapping):
        raise ConfigError(f"{section} must be a mapping, got {section}={shown(node)}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix}{key}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(schema)
    for name, spec in fields.items():
        key = f"{prefix}{name}"
        if name not in node:
            raise ConfigError(f"missing config key {key}")
        value, hint = node[name], hints[name]
        if dataclasses.is_dataclass(hint):
            _check(f"{key}.", hint, value)
        elif "rule" in spec.metadata:
            check(key, value, spec.metadata["rule"])
        elif not fits(value, hint):
            raise ConfigError(f"{key} has the wrong type, got {key}={shown(value)}")
