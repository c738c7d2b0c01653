"""Composing and checking experiment configs.

``compose`` builds a config from ``fedsweep/configs/`` with Hydra's compose API (used by
``fedsweep.run``, the sweep driver and tests) and turns Hydra's multi-line
errors into one line. ``validate`` checks every value a run will use and raises
a one-line :class:`ConfigError` naming the bad one, before any work starts.

Composing imports no torch (``validate`` does, for the components and the optimizer).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsweep.experiment import components
from fedsweep.experiment.components import SECTIONS
from fedsweep.core.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("FEDSWEEP_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
"""The shipped configs: inside the package, so a wheel carries them (``FEDSWEEP_CONFIG_DIR`` replaces them)."""
RUNTIMES = ("local", "ray")


def compose(overrides: Sequence[str] = (), *, config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The experiment config from ``fedsweep/configs/config.yaml`` with Hydra-style overrides.
    ``config_dirs`` (a user's config folders) join Hydra's search path after the shipped configs,
    as ``hydra.searchpath=[...]`` does (``pkg://package.configs`` works there too)."""
    if config_dirs:
        overrides = [*overrides, search_path(config_dirs)]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_one_line(err, overrides)) from None
    return cfg


def search_path(config_dirs: Sequence[str | Path]) -> str:
    """The ``hydra.searchpath`` override that adds ``config_dirs`` (folders, or ``pkg://`` paths)."""
    entries = [d if str(d).startswith(("pkg://", "file://")) else f"file://{Path(d).resolve()}" for d in map(str, config_dirs)]
    for entry in entries:
        if entry.startswith("file://") and not Path(entry.removeprefix("file://")).is_dir():
            raise ConfigError(f"config directory not found: {entry.removeprefix('file://')}")
    return f"hydra.searchpath=[{','.join(entries)}]"


def _one_line(err: Exception, overrides: Sequence[str]) -> str:
    """Hydra's multi-line composition error as one line, with the available options if it lists them."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return f"bad override in {list(overrides)}: {type(err).__name__}"
    message = lines[0].removeprefix("In 'config': ")
    if any(line.startswith("Available options") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options")) + 1
        options = [line for line in lines[start:] if not line.startswith(("Config search path", "provider="))]
        message += f"; available: {', '.join(options)}"
    return message


def to_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved dict (what Ray Tune trials receive)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _positive_int_or_none(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, int) and value >= 1):
        raise ConfigError(f"{name} must be a positive integer or null, got {name}={value}")


def _require(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"missing config key {dotted}")
        node = node[part]
    return node


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise a one-line ConfigError for the first bad value; return None if all are fine.

    The plug-in sections (data, partition, model, loss, method) are checked against their
    targets' signatures; the method and the loss are built (cheap, and they check their own
    ranges), and a target's ``check_config`` (e.g. the partition's) checks what needs no data.
    What needs the data (the model's shapes) is checked by ``fedsweep.experiment.build.check_setup``.
    """
    from fedsweep.federation.server import ServerConfig

    c = to_container(cfg)
    for section in SECTIONS:
        target = components.check(section, _require(c, section))
        if section in ("method", "loss"):
            components.build(section, c[section])
        elif callable(getattr(target, "check_config", None)):
            target.check_config(**components.arguments(c[section]))
    rounds = _require(c, "rounds")
    if not (_is_int(rounds) and rounds >= 1):
        raise ConfigError(f"rounds must be a positive integer, got rounds={rounds!r}")
    _check_fields("server", ServerConfig, _require(c, "server"))
    _positive_int_or_none("client.batch_size", _require(c, "client.batch_size"))
    opt = _require(c, "optimizer.name")
    if not isinstance(opt, str):
        raise ConfigError(f"optimizer.name={opt!r} is not a torch.optim optimizer (e.g. SGD, Adam, AdamW)")
    lr = _require(c, "optimizer.lr")
    if not (_is_number(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr must be > 0, got optimizer.lr={lr}")
    _check_optimizer(c["optimizer"])
    _check_runtime(_require(c, "runtime"))
    device = _require(c, "device")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got device={device!r}")
    seed = _require(c, "seed")
    if not (_is_int(seed) and seed >= 0):
        raise ConfigError(f"seed must be an integer >= 0, got seed={seed!r}")
    seeds = _require(c, "seeds")
    for key, value in seeds.items():
        if key not in ("data", "init", "method"):
            raise ConfigError(f"unknown config key seeds.{key}; known: data, init, method")
        if value is not None and not (_is_int(value) and value >= 0):
            raise ConfigError(f"seeds.{key} must be an integer >= 0 or null, got seeds.{key}={value!r}")
    target = _require(c, "target_accuracy")
    if target is not None and not (_is_number(target) and 0 < target <= 1):
        raise ConfigError(f"target_accuracy must be in (0, 1] or null, got target_accuracy={target}")
    _positive_int_or_none("similarity.batch_size", _require(c, "similarity.batch_size"))
    iterations = _require(c, "similarity.iterations")
    if not (_is_int(iterations) and iterations >= 1):
        raise ConfigError(f"similarity.iterations must be a positive integer, got similarity.iterations={iterations}")
    every = _require(c, "checkpoint.every")
    if not (_is_int(every) and every >= 0):
        raise ConfigError(f"checkpoint.every must be an integer >= 0, got checkpoint.every={every}")
    keep = _require(c, "checkpoint.keep")
    if not (_is_int(keep) and keep >= 1):
        raise ConfigError(f"checkpoint.keep must be a positive integer, got checkpoint.keep={keep!r}")
    resume = _require(c, "checkpoint.resume")
    if resume is not None:
        if not Path(resume).is_file():
            raise ConfigError(f"checkpoint.resume file not found: {resume}")
        from fedsweep.experiment.checkpoint import check_config, load_checkpoint

        check_config(load_checkpoint(resume), c, resume)  # read safely; the same config, or one line


def _check_fields(section: str, schema: type, node: Any) -> None:
    """``node`` against a dataclass schema: known keys, values of the annotated types, and
    the dataclass's own range checks (``__post_init__``)."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{section} must be a mapping, got {section}={node!r}")
    fields = {f.name for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in node.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {section}.{key}; known: {', '.join(sorted(fields))}")
        if not components.fits(value, hints[key]):
            raise ConfigError(f"{section}.{key} has the wrong type, got {section}.{key}={value!r}")
    missing = [f for f in fields if f not in node]
    if missing:
        raise ConfigError(f"missing config key {section}.{sorted(missing)[0]}")
    schema(**node)


def _check_optimizer(opt_cfg: Mapping[str, Any]) -> None:
    """The name must be a concrete ``torch.optim`` optimizer, every other key one of its
    arguments, and each value of its default's kind (a number for a number, a flag for a
    flag). Read from the signature: building a torch optimizer imports torch._dynamo, which
    measured 1.2 s of start-up."""
    import torch

    name = opt_cfg["name"]
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer):
        raise ConfigError(f"optimizer.name={name!r} is not a torch.optim optimizer (e.g. SGD, Adam, AdamW)")
    params = inspect.signature(cls.__init__).parameters
    for key, value in opt_cfg.items():
        if key == "name":
            continue
        if key not in params or key in ("self", "params"):
            known = ", ".join(k for k in params if k not in ("self", "params"))
            raise ConfigError(f"optimizer.{key}={value!r} is not an argument of torch.optim.{name}; known: {known}")
        default = params[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"optimizer.{key} must be true or false, got optimizer.{key}={value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not _is_number(value):
            raise ConfigError(f"optimizer.{key} must be a number, got optimizer.{key}={value!r}")
        if isinstance(default, tuple) and not (isinstance(value, (list, tuple)) and all(map(_is_number, value))):
            raise ConfigError(f"optimizer.{key} must be a list of numbers, got optimizer.{key}={value!r}")


def _check_runtime(runtime: Mapping[str, Any]) -> None:
    name = runtime.get("name")
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime.name={name!r}; known: {', '.join(RUNTIMES)}")
    vectorize = _require(runtime, "vectorize")
    if vectorize not in ("auto", True, False):
        raise ConfigError(f"runtime.vectorize must be auto, true or false, got runtime.vectorize={vectorize!r}")
    if name != "ray":
        return
    workers = _require(runtime, "workers")
    if workers != "auto" and not (_is_int(workers) and workers >= 0):
        raise ConfigError(f"runtime.workers must be auto or an integer >= 0, got runtime.workers={workers!r}")
    for key in ("num_cpus", "num_gpus"):
        value = _require(runtime, key)
        if key == "num_gpus" and value == "auto":
            continue
        if not (_is_number(value) and value >= 0):
            raise ConfigError(f"runtime.{key} must be a number >= 0, got runtime.{key}={value!r}")
    dashboard = _require(runtime, "dashboard")
    if not isinstance(dashboard, bool):
        raise ConfigError(f"runtime.dashboard must be true or false, got runtime.dashboard={dashboard!r}")
    restarts = _require(runtime, "max_restarts")
    if not (_is_int(restarts) and restarts >= 0):
        raise ConfigError(f"runtime.max_restarts must be an integer >= 0, got runtime.max_restarts={restarts!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def worker_count(workers: int | str, num_cpus: float, cpus: float) -> int:
    """Resolve ``runtime.workers: auto`` for a run that may use ``cpus`` CPUs: one worker per
    ``num_cpus`` of them; none below 2 CPUs, where the run's own process serves its clients
    (a pool of one worker adds a process, a copy of the model and a round trip, and no
    parallelism: measured 24 s against 15 s for the default 8-trial sweep on 2 CPUs)."""
    if workers != "auto":
        return int(workers)
    if cpus < 2:
        return 0
    return max(1, int(cpus // num_cpus)) if num_cpus > 0 else 1


def gpu_share(num_gpus: float | str, participants: int, cluster_gpus: float) -> float:
    """Resolve ``runtime.num_gpus: auto``: no GPU share without GPUs, else the largest
    1/2^k (a fraction that divides 1, as Ray advises) that fits a trial's workers and
    its server (``participants``, one share each) on one GPU."""
    if num_gpus != "auto":
        return float(num_gpus)
    if cluster_gpus <= 0:
        return 0.0
    return 1.0 / 2 ** math.ceil(math.log2(participants))


def resolve_runtime(cfg: dict[str, Any], *, cpus: float, gpus: float) -> dict[str, Any]:
    """``cfg`` (a copy) with ``runtime.workers`` and ``runtime.num_gpus`` resolved for a run that
    may use ``cpus`` CPUs of a cluster with ``gpus`` GPUs. Other runtimes are returned as is."""
    runtime = cfg["runtime"]
    if runtime["name"] != "ray":
        return cfg
    workers = worker_count(runtime["workers"], runtime["num_cpus"], cpus)
    num_gpus = gpu_share(runtime["num_gpus"], workers + 1, gpus)
    return {**cfg, "runtime": {**runtime, "workers": workers, "num_gpus": num_gpus}}


def make_optimizer_factory(opt_cfg: Mapping[str, Any]):
    """``params -> torch.optim.<name>(params, **rest)`` from the optimizer config group."""
    import torch

    kwargs = {k: v for k, v in opt_cfg.items() if k != "name"}
    cls = getattr(torch.optim, opt_cfg["name"])

    def make(params):
        return cls(params, **kwargs)

    return make
