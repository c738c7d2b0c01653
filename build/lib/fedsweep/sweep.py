"""Sweep files: parse, check and expand into a Ray Tune ``param_space``.

A sweep file is YAML:

    name: vrcs_grid                  # results/<name>/ holds everything the sweep writes
    overrides: [runtime=ray, rounds=20]   # Hydra overrides of fedsweep/configs/config.yaml
    grid:                            # dotted config keys → lists of values (a full grid)
      theta: [0.05, 0.5]
      p: [0.2, 0.8]
      method: [vrcs, fedavg]         # a config group (fedsweep/configs/<group>/) → its options
    metric: accuracy/test            # what the table ranks by (optional)
    mode: max                        # max | min (optional)
    max_concurrent_trials: 2         # optional
    max_trials: 1000                 # optional: a larger grid stops before it starts
    repeats: 5                       # optional: every grid point with seeds 0..4; mean ± 95% CI

Everything here runs before Ray starts, so a bad file costs nothing.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedsweep.config import CONFIG_DIR, compose, to_container, validate
from fedsweep.errors import ConfigError
from fedsweep.metrics import REPORTED

SWEEP_KEYS = ("name", "overrides", "grid", "repeats", "metric", "mode", "max_concurrent_trials", "max_trials")
MAX_TRIALS = 1000  # a larger grid must say so with max_trials


@dataclass(frozen=True)
class Sweep:
    name: str
    overrides: tuple[str, ...]
    grid: dict[str, list[Any]]
    metric: str = "accuracy/test"
    mode: str = "max"
    max_concurrent_trials: int | None = None
    max_trials: int = MAX_TRIALS
    repeats: int = 1  # seeds 0 .. repeats - 1 for every grid point; the table reports their mean and CI
    source: str = field(default="", compare=False)  # the file's text, kept beside the results


def load_sweep(path: str | Path, *, overrides: Sequence[str] = (), name: str | None = None) -> Sweep:
    """Parse and check a sweep file; one-line ConfigError on anything wrong. ``overrides`` (Hydra
    ``key=value``) follow the file's own, and ``name`` replaces its name: both are written into
    the sweep's recorded source, so a resume must repeat them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    text = path.read_text()
    if overrides or name is not None:
        text += f"\n# from the command line: name={name!r} overrides={list(overrides)!r}\n"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    if name is not None:
        raw = {**raw, "name": name}
    if overrides:
        file_overrides = raw.get("overrides") or []
        if not isinstance(file_overrides, list):
            raise ConfigError(f"{path}: overrides must be a list of key=value strings, got {file_overrides!r}")
        raw = {**raw, "overrides": [*file_overrides, *overrides]}
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(SWEEP_KEYS)}")
    name = raw.get("name", path.stem)
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".")):
        raise ConfigError(
            f"{path}: name must be one folder name of letters, digits, '_', '-' or '.' (not only dots), "
            f"got name={name!r}"
        )
    overrides = raw.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{path}: overrides must be a list of key=value strings, got {overrides!r}")
    grid = raw.get("grid")
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"{path}: grid must be a non-empty mapping of config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be max or min, got mode={mode!r}")
    metric = raw.get("metric", "accuracy/test")
    if metric not in REPORTED:
        raise ConfigError(f"{path}: metric={metric!r} is not a metric runs report; known: {', '.join(REPORTED)}")
    mct = raw.get("max_concurrent_trials")
    if mct is not None and not (isinstance(mct, int) and mct >= 1):
        raise ConfigError(f"{path}: max_concurrent_trials must be a positive integer, got {mct!r}")
    max_trials = raw.get("max_trials", MAX_TRIALS)
    if not (isinstance(max_trials, int) and not isinstance(max_trials, bool) and max_trials >= 1):
        raise ConfigError(f"{path}: max_trials must be a positive integer, got max_trials={max_trials!r}")
    repeats = raw.get("repeats", 1)
    if not (isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1):
        raise ConfigError(f"{path}: repeats must be a positive integer, got repeats={repeats!r}")
    if repeats > 1:
        if "seed" in grid:
            raise ConfigError(f"{path}: repeats={repeats} sets the seeds; drop seed from the grid or use repeats: 1")
        grid = {**grid, "seed": list(range(repeats))}
    trials = math.prod(len(v) for v in grid.values())
    if trials > max_trials:
        raise ConfigError(
            f"{path}: the grid makes {trials} trials, more than max_trials={max_trials}; "
            f"set max_trials: {trials} in the file to run them all"
        )
    return Sweep(
        name=name,
        overrides=tuple(overrides),
        grid={str(k): list(v) for k, v in grid.items()},
        metric=metric,
        mode=mode,
        max_concurrent_trials=mct,
        max_trials=max_trials,
        repeats=repeats,
        source=text,
    )


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _has(cfg: Mapping[str, Any], dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def config_groups() -> set[str]:
    """Config groups: the folders of ``fedsweep/configs/`` (data, model, method, ...)."""
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


def grid_values(sweep: Sweep) -> dict[str, list[Any]]:
    """Each grid key's values as config values: a group's options become their composed sub-configs."""
    groups = config_groups()
    values = {}
    for key, options in sweep.grid.items():
        if key in groups:
            values[key] = [to_container(compose([*sweep.overrides, f"{key}={option}"]))[key] for option in options]
        else:
            values[key] = list(options)
    return values


def expand(sweep: Sweep) -> tuple[dict[str, Any], dict[str, list[Any]], list[dict[str, Any]]]:
    """The base config, the grid's config values and every grid point's full config, each validated.

    Raises ConfigError naming the first bad key or value.
    """
    base = to_container(compose(sweep.overrides))
    for key in sweep.grid:
        if not _has(base, key):
            raise ConfigError(f"grid key {key!r} is not a config key (see fedsweep/configs/config.yaml)")
    grid = grid_values(sweep)
    points = []
    for values in itertools.product(*grid.values()):
        cfg = copy.deepcopy(base)
        for key, value in zip(grid, values):
            _set(cfg, key, copy.deepcopy(value))
        validate(cfg)
        points.append(cfg)
    return base, grid, points


def param_space(base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> dict[str, Any]:
    """``base`` with every grid key replaced by ``tune.grid_search(values)``."""
    from ray import tune

    space = copy.deepcopy(dict(base))
    for key, values in grid.items():
        _set(space, key, tune.grid_search(values))
    return space


def label(config: Mapping[str, Any], key: str) -> Any:
    """A grid key's value in ``config`` as a short label (a group's ``name`` for config groups)."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    if isinstance(node, Mapping):
        return node.get("name", node.get("scheme", "?"))
    return node
