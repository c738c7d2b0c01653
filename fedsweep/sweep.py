"""Sweep files: parse, check and expand into a Ray Tune ``param_space``.

A sweep file is YAML:

    name: vrcs_grid                  # results/<name>/ holds everything the sweep writes
    overrides: [runtime=ray, rounds=20]   # Hydra overrides of fedsweep/configs/config.yaml
    grid:                            # dotted config keys → lists of values (a full grid) or domains
      method.theta: [0.05, 0.5]
      method.p: {uniform: [0.2, 0.8]}   # sampled: choice, uniform, loguniform, randint (fedsweep.search_space)
      seed: [0, 1]
    # or a config group: its options, each crossed with the group's keys it has, or each its own grid:
    #   method: {vrcs: {theta: [0.05, 0.5]}, fedavg: {lr: [0.05, 0.1]}}
    search: grid                     # grid | random | optuna (optional, default grid)
    num_samples: 1                   # grid: runs of the grid, domains sampled anew; random/optuna: the trials
    scheduler: {name: asha, grace_period: 3}   # optional: ASHA early stopping on the metric, in rounds
    metric: accuracy/test            # what the table ranks by, and what search and scheduler optimise
    mode: max                        # max | min (optional)
    rank: last                       # last | best: rank trials by their last round or their best one
    max_concurrent_trials: 2         # optional
    max_trials: 1000                 # optional: a larger sweep stops before it starts
    repeats: 5                       # optional, grid search only: every grid point with seeds 0..4; mean ± 95% CI

``search: grid`` runs every combination of the lists (Tune's grid search), each ``num_samples``
times, sampling the domains anew each time. ``search: random`` samples every key (a list is a
choice) for ``num_samples`` trials with Tune's BasicVariantGenerator, ``search: optuna`` lets
Optuna's TPE propose them (``OptunaSearch`` on ``metric``/``mode``). ``repeats`` is for grids
only: a sampled configuration runs once (put ``seed`` in the space to vary it).

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

from fedsweep import components
from fedsweep.config import CONFIG_DIR, compose, to_container, validate
from fedsweep.errors import ConfigError
from fedsweep.metrics import EVERY_ROUND, REPORTED
from fedsweep.search_space import KINDS, SCALARS, Domain, is_sampled, parse_value

SWEEP_KEYS = ("name", "overrides", "grid", "search", "num_samples", "scheduler", "repeats", "metric", "mode",
              "rank", "max_concurrent_trials", "max_trials")  # fmt: skip
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("asha",)
MAX_TRIALS = 1000  # a larger sweep must say so with max_trials


@dataclass(frozen=True)
class Asha:
    """Tune's ASHAScheduler on the sweep's metric, its time the reported ``round``: a trial may
    stop after ``grace_period`` rounds, and at each rung the best 1/``reduction_factor`` go on."""

    grace_period: int = 1
    reduction_factor: float = 4.0


@dataclass(frozen=True)
class Sweep:
    name: str
    overrides: tuple[str, ...]
    grid: dict[str, list[Any] | Domain]
    metric: str = "accuracy/test"
    mode: str = "max"
    search: str = "grid"
    num_samples: int = 1
    scheduler: Asha | None = None
    rank: str = "last"  # last | best: the table ranks by each trial's last round or its best one
    max_concurrent_trials: int | None = None
    max_trials: int = MAX_TRIALS
    repeats: int = 1  # seeds 0 .. repeats - 1 for every grid point; the table reports their mean and CI
    source: str = field(default="", compare=False)  # the file's text, kept beside the results

    @property
    def columns(self) -> list[str]:
        """The keys a trial is labelled by: the grid's, with a group's per-option keys as
        ``group.key`` after the group (``method`` → ``method``, ``method.theta``, ``method.lr``)."""
        out: list[str] = []
        for key, values in self.grid.items():
            out.append(key) if key not in out else None
            if isinstance(values, Mapping):
                for inner in values.values():
                    out += [f"{key}.{k}" for k in (inner or {}) if f"{key}.{k}" not in out]
        return out


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
        raise ConfigError(f"{path}: grid must be a non-empty mapping of config keys to lists of values or domains")
    groups = config_groups()
    parsed: dict[str, Any] = {}
    for key, value in grid.items():
        key = str(key)
        if key in groups and isinstance(value, Mapping) and value and not _names_a_domain(value):
            for option, inner in value.items():  # per-option grids: {vrcs: {theta: [..]}, fedavg: {lr: [..]}}
                if inner is not None and not (
                    isinstance(inner, Mapping) and all(isinstance(v, list) and v for v in inner.values())
                ):
                    raise ConfigError(f"{path}: grid.{key}.{option} must map its keys to non-empty lists, got {inner!r}")
            parsed[key] = {str(option): dict(inner or {}) for option, inner in value.items()}
            continue
        try:
            parsed[key] = parse_value(key, value)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    grid = parsed
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be max or min, got mode={mode!r}")
    metric = raw.get("metric", "accuracy/test")
    if metric not in REPORTED:
        raise ConfigError(f"{path}: metric={metric!r} is not a metric runs report; known: {', '.join(REPORTED)}")
    rank = raw.get("rank", "last")
    if rank not in ("last", "best"):
        raise ConfigError(f"{path}: rank must be last or best, got rank={rank!r}")
    mct = raw.get("max_concurrent_trials")
    if mct is not None and not _positive_int(mct):
        raise ConfigError(f"{path}: max_concurrent_trials must be a positive integer, got {mct!r}")
    max_trials = raw.get("max_trials", MAX_TRIALS)
    if not _positive_int(max_trials):
        raise ConfigError(f"{path}: max_trials must be a positive integer, got max_trials={max_trials!r}")
    repeats = raw.get("repeats", 1)
    if not _positive_int(repeats):
        raise ConfigError(f"{path}: repeats must be a positive integer, got repeats={repeats!r}")
    search = raw.get("search", "grid")
    if search not in SEARCHES:
        raise ConfigError(f"{path}: search must be one of {', '.join(SEARCHES)}, got search={search!r}")
    num_samples = raw.get("num_samples", 1)
    if not _positive_int(num_samples):
        raise ConfigError(f"{path}: num_samples must be a positive integer, got num_samples={num_samples!r}")
    scheduler = _scheduler(raw.get("scheduler"), path)
    _check_search(path, search, grid, raw, repeats=repeats, num_samples=num_samples)
    if (scheduler is not None or search == "optuna") and metric not in EVERY_ROUND:
        raise ConfigError(
            f"{path}: metric={metric!r} is not reported every round, which "
            f"{'search: optuna' if scheduler is None else 'scheduler: asha'} needs; use one of {', '.join(EVERY_ROUND)}"
        )
    if repeats > 1:
        if "seed" in grid:
            raise ConfigError(f"{path}: repeats={repeats} sets the seeds; drop seed from the grid or use repeats: 1")
        grid = {**grid, "seed": list(range(repeats))}
    sweep = Sweep(
        name=name,
        overrides=tuple(overrides),
        grid=grid,
        metric=metric,
        mode=mode,
        search=search,
        num_samples=num_samples,
        scheduler=scheduler,
        rank=rank,
        max_concurrent_trials=mct,
        max_trials=max_trials,
        repeats=repeats,
        source=text,
    )
    trials = trial_count(sweep)
    if trials is not None and trials > max_trials:
        what = "grid" if search == "grid" else f"{search} search"
        raise ConfigError(
            f"{path}: the {what} makes {trials} trials, more than max_trials={max_trials}; "
            f"set max_trials: {trials} in the file to run them all"
        )
    return sweep


def _names_a_domain(value: Mapping[str, Any]) -> bool:
    return len(value) == 1 and next(iter(value)) in KINDS


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _scheduler(raw: Any, path: Path) -> Asha | None:
    """``scheduler: asha`` or ``scheduler: {name: asha, grace_period: 3, reduction_factor: 4}``."""
    if raw is None:
        return None
    spec = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, Mapping) or spec.get("name") not in SCHEDULERS:
        name = spec.get("name") if isinstance(spec, Mapping) else spec
        raise ConfigError(f"{path}: scheduler must be one of {', '.join(SCHEDULERS)} (or {{name: asha, ...}}), got {name!r}")
    unknown = [k for k in spec if k not in ("name", "grace_period", "reduction_factor")]
    if unknown:
        raise ConfigError(f"{path}: unknown key scheduler.{unknown[0]}; known: name, grace_period, reduction_factor")
    grace = spec.get("grace_period", 1)
    if not _positive_int(grace):
        raise ConfigError(f"{path}: scheduler.grace_period must be a positive number of rounds, got {grace!r}")
    factor = spec.get("reduction_factor", 4)
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor) and factor > 1):
        raise ConfigError(f"{path}: scheduler.reduction_factor must be a number > 1, got {factor!r}")
    return Asha(grace_period=grace, reduction_factor=float(factor))


def _check_search(path: Path, search: str, grid: Mapping[str, Any], raw: Mapping[str, Any], *, repeats: int,
                  num_samples: int) -> None:  # fmt: skip
    """What each search accepts: a sampled search needs its budget and runs each configuration
    once; Optuna samples numbers and strings only (not config groups)."""
    if search == "grid":
        if num_samples > 1 and not any(is_sampled(v) for v in grid.values()):
            raise ConfigError(
                f"{path}: num_samples={num_samples} would run every grid point {num_samples} times with the same "
                "config; use repeats for seeds, or sample a key (e.g. {uniform: [lo, hi]})"
            )
        return
    if "num_samples" not in raw:
        raise ConfigError(f"{path}: search: {search} needs num_samples, its budget of trials")
    if repeats > 1:
        raise ConfigError(
            f"{path}: repeats={repeats} needs search: grid; search: {search} runs each sampled configuration once "
            "(sample seed in the grid instead)"
        )
    if search == "optuna":
        groups = config_groups()
        for key, value in grid.items():
            if key in groups:
                raise ConfigError(f"{path}: search: optuna samples values, not config groups: grid.{key} needs search: grid or random")
            options = value.options if isinstance(value, Domain) and value.kind == "choice" else value
            if isinstance(options, list) and not all(isinstance(o, SCALARS) for o in options):
                raise ConfigError(f"{path}: search: optuna chooses among numbers and strings only, got grid.{key}={options!r}")


def trial_count(sweep: Sweep, grid: Mapping[str, list[Any] | Domain] | None = None) -> int | None:
    """How many trials the sweep runs: the grid's points × num_samples, or num_samples. Counted
    from the composed grid values (:func:`grid_values`) when given; from the file's grid, None
    when a config group folds keys (a union of per-option grids, counted once composed)."""
    if sweep.search != "grid":
        return sweep.num_samples
    if grid is None:
        if any(folded_keys(sweep.grid).values()) or any(isinstance(v, dict) for v in sweep.grid.values()):
            return None
        grid = sweep.grid
    return math.prod(len(v) for v in grid.values() if not is_sampled(v)) * sweep.num_samples


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


def folded_keys(grid: Mapping[str, Any]) -> dict[str, list[str]]:
    """For each config group in ``grid``, the grid's keys inside it (``method`` → ``method.theta``)."""
    groups = config_groups()
    return {g: [k for k in grid if k.startswith(g + ".")] for g in grid if g in groups}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def option_config(overrides: Sequence[str], group: str, option: str) -> dict[str, Any]:
    """Group ``group``'s node with ``option`` chosen, and of ``overrides`` inside the group only
    those whose key the option has (``method.theta=0.5`` applies to VRCS, not to FedAvg)."""
    inside = [o for o in overrides if _override_key(o).startswith(group + ".")]
    rest = [o for o in overrides if o not in inside]
    node = to_container(compose([*rest, f"{group}={option}"]))[group]
    applies = [o for o in inside if o.startswith("+") or _has(node, o.split("=", 1)[0].lstrip("~")[len(group) + 1 :])]
    return to_container(compose([*rest, f"{group}={option}", *applies]))[group] if applies else node


def grid_values(sweep: Sweep) -> dict[str, list[Any] | Domain]:
    """Each grid key's values as config values. A config group's options become their composed
    nodes, each crossed with the grid's keys inside the group that it has: ``method: [vrcs,
    fedavg]`` with ``method.theta`` and ``method.lr`` runs VRCS over θ and FedAvg over lr, each
    method on its own grid (a union, not a product), and the table leaves θ blank for FedAvg.
    A ``{choice: [...]}`` of a group's options becomes a choice of their composed nodes."""
    folded = folded_keys(sweep.grid)
    inner_keys = {k for keys in folded.values() for k in keys}
    values: dict[str, list[Any] | Domain] = {}
    for key, options in sweep.grid.items():
        if key in inner_keys:
            continue
        if key not in folded:
            values[key] = options
            continue
        if isinstance(options, Domain):
            if options.kind != "choice" or folded[key]:
                raise ConfigError(
                    f"grid.{key} is a config group: give a list, per-option grids or {{choice: [...]}} of its options "
                    f"(a choice takes no {key}.* keys), got {options}"
                )
            values[key] = Domain("choice", tuple(option_config(sweep.overrides, key, o) for o in options.options))
            continue
        if any(is_sampled(sweep.grid[k]) for k in folded[key]):
            raise ConfigError(f"grid keys inside the config group {key} must be lists, got {folded[key]}")
        nodes, used = [], set()
        per_option = options if isinstance(options, Mapping) else dict.fromkeys(options)
        for option, own in per_option.items():
            node = option_config(sweep.overrides, key, option)
            inner = [k for k in folded[key] if _has(node, k[len(key) + 1 :])]
            used.update(inner)
            axes = {k[len(key) + 1 :]: sweep.grid[k] for k in inner} | dict(own or {})
            for sub_key in axes:
                if not _has(node, sub_key):
                    raise ConfigError(f"grid.{key}.{option}: {sub_key!r} is not a key of {key}={option}; known: {', '.join(node)}")
            for combo in itertools.product(*axes.values()):
                sub = copy.deepcopy(node)
                for k, v in zip(axes, combo):
                    _set(sub, k, copy.deepcopy(v))
                nodes.append(sub)
        unused = [k for k in folded[key] if k not in used]
        if unused:
            raise ConfigError(f"grid key {unused[0]!r} is a key of none of {key}'s options {options}")
        values[key] = nodes
    return values


def expand(sweep: Sweep) -> tuple[dict[str, Any], dict[str, list[Any]], list[dict[str, Any]]]:
    """The base config, the grid's config values and the configs checked before Ray starts, each
    validated: every point of the grid's lists (a grid search) and, against each of them, every
    option and both ends of every sampled key in turn (for a sampled search the lists are choices).
    Each distinct data/partition/model among them is built once, cheaply (``check_setup``).

    Raises ConfigError naming the first bad key or value.
    """
    from fedsweep.setup import check_setup

    folded = folded_keys(sweep.grid)
    # a grid over a group replaces its node: overrides inside it apply per option (option_config)
    base = to_container(compose([o for o in sweep.overrides if _override_key(o).split(".")[0] not in folded]))
    inner_keys = {k for keys in folded.values() for k in keys}
    for key in sweep.grid:
        if key not in inner_keys and not _has(base, key):
            raise ConfigError(f"grid key {key!r} is not a config key (see fedsweep/configs/config.yaml)")
    grid = grid_values(sweep)
    axes = {k: v for k, v in grid.items() if sweep.search == "grid" and not is_sampled(v)}
    trials = trial_count(sweep, grid)
    if trials > sweep.max_trials:
        raise ConfigError(f"the grid makes {trials} trials, more than max_trials={sweep.max_trials}; "
                          f"set max_trials: {trials} in the file to run them all")  # fmt: skip
    sampled = {k: (v.candidates() if isinstance(v, Domain) else list(v)) for k, v in grid.items() if k not in axes}
    variations = [{k: c[0] for k, c in sampled.items()}]
    variations += [{**variations[0], key: value} for key, options in sampled.items() for value in options[1:]]
    points, built = [], set()
    for values in itertools.product(*axes.values()):
        for variation in variations:
            cfg = copy.deepcopy(base)
            for key, value in [*zip(axes, values), *variation.items()]:
                _set(cfg, key, copy.deepcopy(value))
            validate(cfg)
            fixed = repr([cfg[k] for k in ("data", "partition", "model", "loss", "device")])  # seeds aside
            if fixed not in built:
                check_setup(cfg)
                built.add(fixed)
            points.append(cfg)
    if sweep.scheduler is not None:
        rounds = max(p["rounds"] for p in points)
        if sweep.scheduler.grace_period > rounds:
            raise ConfigError(
                f"scheduler.grace_period={sweep.scheduler.grace_period} is more than the trials' rounds={rounds}"
            )
    return base, grid, points


def param_space(base: Mapping[str, Any], grid: Mapping[str, list[Any] | Domain], search: str = "grid") -> dict[str, Any]:
    """``base`` with every grid key replaced by its Tune domain: a list is ``tune.grid_search``
    in a grid search and ``tune.choice`` in a sampled one; a domain is its Tune domain."""
    from ray import tune

    space = copy.deepcopy(dict(base))
    for key, values in grid.items():
        if isinstance(values, Domain):
            _set(space, key, values.to_tune())
        else:
            _set(space, key, tune.grid_search(values) if search == "grid" else tune.choice(values))
    return space


def label(config: Mapping[str, Any], key: str) -> Any:
    """A grid key's value in ``config`` as a short label (a component's name for config groups;
    None where the key does not apply, e.g. ``method.theta`` for FedAvg)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return components.label(node) if isinstance(node, Mapping) else node


def short_label(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``theta=0.05,p=0.2``: the keys that apply (last parts) and their values, floats to 4 significant digits."""
    def text(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    labels = [(key.split(".")[-1], label(config, key)) for key in keys]
    return ",".join(f"{key}={text(value)}" for key, value in labels if value is not None)
