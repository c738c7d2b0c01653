"""Composing and checking experiment configs.

``compose`` builds a config from ``fedsweep/configs/`` with Hydra's compose API (used by
``fedsweep.run``, the sweep driver and tests) and turns Hydra's multi-line
errors into one line. ``validate`` checks every value a run will use and raises
a one-line :class:`ConfigError` naming the bad one, before any work starts.

Composing imports no torch (``validate`` does, for the components and the optimizer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsweep.experiment import components
from fedsweep.experiment.components import SECTIONS
from fedsweep.experiment.settings import check_settings
from fedsweep.core import yaml_files
from fedsweep.core.checks import first_line, shown
from fedsweep.core.errors import ConfigError
from fedsweep.core.targets import check_all_targets, use_plugins

CONFIG_DIR = Path(os.environ.get("FEDSWEEP_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
"""The shipped configs: inside the package, so a wheel carries them (``FEDSWEEP_CONFIG_DIR`` replaces them)."""


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
        except ValueError as err:  # Hydra's override parser: e.g. an integer past Python's 4300 digits
            raise ConfigError(f"cannot read the overrides: {shown(first_line(err))}") from None
    return cfg


def search_path(config_dirs: Sequence[str | Path]) -> str:
    """The ``hydra.searchpath`` override that adds ``config_dirs`` (folders, or ``pkg://`` paths)."""
    entries = [d if str(d).startswith(("pkg://", "file://")) else f"file://{Path(d).resolve()}" for d in map(str, config_dirs)]
    for entry in entries:
        folder = Path(entry.removeprefix("file://"))
        if entry.startswith("file://") and not folder.is_dir():
            raise ConfigError(f"config directory not found: {folder}")
        if entry.startswith("file://"):  # a user's folder: UTF-8 YAML without aliases, before Hydra expands them
            for file in sorted(folder.rglob("*.yaml")):
                yaml_files.check_file(file)
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


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise a one-line ConfigError for the first bad value; return None if all are fine.

    Every component (``SECTIONS``) is checked against its target's signature, and those that are
    cheap to build and check their own ranges are built (method, loss, solver, an in-process
    runtime); a target's ``check_config`` (a partition's, the Ray pool's) checks what needs no
    data or Ray. The run's own settings are checked against their schema
    (``fedsweep.experiment.settings``). What needs the data (the model's shapes) is checked by
    ``fedsweep.experiment.build.check_setup``; every ``_target_`` must be inside an allowed package
    (``fedsweep.core.targets``: fedsweep, torch.optim, the config's ``plugins``); a checkpoint to resume from is read by the run.
    """
    c = to_container(cfg)
    use_plugins(c.get("plugins"))  # one line for a bad list; the targets below may name these packages
    check_all_targets(c)  # every _target_, nested or in a list, before any is imported
    for section in SECTIONS:
        if section not in c:
            raise ConfigError(f"missing config key {section}")
        target = components.check(section, c[section])
        if callable(getattr(target, "check_config", None)):
            target.check_config(**components.arguments(c[section]))
        elif section in ("method", "loss", "solver") or (section == "runtime" and not getattr(target, "uses_ray", False)):
            components.build(section, c[section], device="cpu", label="check")
    check_settings(c, components=SECTIONS)
    resume = c["checkpoint"]["resume"]
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"checkpoint.resume file not found: {resume}")


def uses_ray(cfg: Mapping[str, Any]) -> bool:
    """Whether the config's runtime needs a running Ray."""
    return bool(getattr(components.target("runtime", cfg["runtime"]), "uses_ray", False))


def resolve_runtime(cfg: dict[str, Any], *, cpus: float, gpus: float) -> dict[str, Any]:
    """``cfg`` (a copy) with a Ray pool's ``workers`` and ``num_gpus: auto`` resolved for a run that
    may use ``cpus`` CPUs of a cluster with ``gpus`` GPUs; other runtimes as they are."""
    if not uses_ray(cfg):
        return cfg
    from fedsweep.federation.runtime.resources import resolve

    return {**cfg, "runtime": resolve(cfg["runtime"], cpus=cpus, gpus=gpus)}
