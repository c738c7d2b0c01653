"""Composing and checking experiment configs.

``compose`` builds a config from ``fedsweep/configs/`` with Hydra's compose API (used by
``fedsweep.run``, the sweep driver and tests) and turns Hydra's multi-line
errors into one line. ``validate`` checks every value a run will use and raises
a one-line :class:`ConfigError` naming the bad one, before any work starts.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fedsweep.data import DATASETS
from fedsweep.data.partition import check_partition_config
from fedsweep.errors import ConfigError
from fedsweep.methods import METHODS, build_method
from fedsweep.models import MODELS, NORMS

CONFIG_DIR = Path(os.environ.get("FEDSWEEP_CONFIG_DIR", Path(__file__).resolve().parent / "configs"))
"""The shipped configs: inside the package, so a wheel carries them (``FEDSWEEP_CONFIG_DIR`` replaces them)."""
RUNTIMES = ("local", "ray")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The experiment config from ``fedsweep/configs/config.yaml`` with Hydra-style overrides."""
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
    """Raise a one-line ConfigError for the first bad value; return None if all are fine."""
    c = to_container(cfg)
    method = _require(c, "method.name")
    if method not in METHODS:
        raise ConfigError(f"unknown method.name={method!r}; known: {', '.join(METHODS)}")
    for key in {"vrcs": ("theta", "p", "q"), "sliding": ("theta",), "server_only": ("theta",)}.get(method, ()):
        _require(c, key)
    if method in ("fedavg", "fedprox"):
        for key in ("method.local_epochs", "method.lr", "method.batch_size") + (("method.mu",) if method == "fedprox" else ()):
            _require(c, key)
    build_method(c)  # checks the method's own hyperparameters
    for key in ("rounds", "server.epochs"):
        value = _require(c, key)
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{key} must be a positive integer, got {key}={value}")
    solver = _require(c, "server.solver")
    if solver not in ("lbfgs", "optimizer"):
        raise ConfigError(f"server.solver must be lbfgs or optimizer, got server.solver={solver!r}")
    tolerance = _require(c, "server.tolerance")
    if not (_is_number(tolerance) and tolerance > 0):
        raise ConfigError(f"server.tolerance must be > 0, got server.tolerance={tolerance!r}")
    max_steps = _require(c, "server.max_steps")
    if not (_is_int(max_steps) and max_steps >= 1):
        raise ConfigError(f"server.max_steps must be a positive integer, got server.max_steps={max_steps!r}")
    for key in ("server.batch_size", "server.grad_batch_size", "client.batch_size"):
        _positive_int_or_none(key, _require(c, key))
    data = _require(c, "data.name")
    if data not in DATASETS:
        raise ConfigError(f"unknown data.name={data!r}; known: {', '.join(DATASETS)}")
    test_fraction = _require(c, "data.test_fraction")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ConfigError(f"data.test_fraction must be in (0, 1), got data.test_fraction={test_fraction}")
    model = _require(c, "model.name")
    if model not in MODELS:
        raise ConfigError(f"unknown model.name={model!r}; known: {', '.join(MODELS)}")
    norm = _require(c, "model.norm")
    if norm == "batch":
        raise ConfigError(
            "model.norm='batch' is not supported: BatchNorm's running statistics are never federated and its "
            "batch statistics mix examples, so h would not be a mean over examples; use group or none"
        )
    if norm not in NORMS:
        raise ConfigError(f"unknown model.norm={norm!r}; known: {', '.join(n for n in NORMS if n != 'batch')}")
    hidden = _require(c, "model.hidden")
    if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1):
        raise ConfigError(f"model.hidden must be a positive integer, got model.hidden={hidden}")
    opt = _require(c, "optimizer.name")
    if not isinstance(opt, str):
        raise ConfigError(f"optimizer.name={opt!r} is not a torch.optim optimizer (e.g. SGD, Adam, AdamW)")
    lr = _require(c, "optimizer.lr")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"optimizer.lr must be > 0, got optimizer.lr={lr}")
    _check_optimizer(c["optimizer"])
    _check_runtime(_require(c, "runtime"))
    device = _require(c, "device")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got device={device!r}")
    _require(c, "seed")
    target = _require(c, "target_accuracy")
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ConfigError(f"target_accuracy must be in (0, 1] or null, got target_accuracy={target}")
    iterations = _require(c, "similarity.iterations")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ConfigError(f"similarity.iterations must be a positive integer, got similarity.iterations={iterations}")
    every = _require(c, "checkpoint.every")
    if not (isinstance(every, int) and every >= 0):
        raise ConfigError(f"checkpoint.every must be an integer >= 0, got checkpoint.every={every}")
    keep = _require(c, "checkpoint.keep")
    if not (_is_int(keep) and keep >= 1):
        raise ConfigError(f"checkpoint.keep must be a positive integer, got checkpoint.keep={keep!r}")
    resume = _require(c, "checkpoint.resume")
    if resume is not None:
        if not Path(resume).is_file():
            raise ConfigError(f"checkpoint.resume file not found: {resume}")
        from fedsweep.checkpoint import check_config, load_checkpoint

        check_config(load_checkpoint(resume), c, resume)  # read safely; the same config, or one line
    _check_partition(_require(c, "partition"))


def _check_optimizer(opt_cfg: Mapping[str, Any]) -> None:
    """The name must be a concrete ``torch.optim`` optimizer, every other key one of its
    arguments, and each value of its default's kind (a number for a number, a flag for a
    flag). Read from the signature: building a torch optimizer imports torch._dynamo, which
    measured 1.2 s of start-up."""
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


def _check_partition(partition: Mapping[str, Any]) -> None:
    params = inspect.signature(check_partition_config).parameters
    unknown = [k for k in partition if k not in params]
    if unknown:
        raise ConfigError(f"unknown partition key {unknown[0]!r}; known: {', '.join(params)}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in partition]
    if missing:
        raise ConfigError(f"missing config key partition.{missing[0]}")
    check_partition_config(**partition)


def make_optimizer_factory(opt_cfg: Mapping[str, Any]):
    """``params -> torch.optim.<name>(params, **rest)`` from the optimizer config group."""
    kwargs = {k: v for k, v in opt_cfg.items() if k != "name"}
    cls = getattr(torch.optim, opt_cfg["name"])

    def make(params):
        return cls(params, **kwargs)

    return make
