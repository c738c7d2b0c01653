"""Sweep files: parse, check and expand into a Ray Tune ``param_space``.

A sweep file is YAML:

    name: vrcs_grid                  # results/<name>/ holds everything the sweep writes
    plugins: [mypkg]                 # optional: your packages that _target_ may name (fedsweep.core.targets)
    overrides: [runtime=ray, rounds=20]   # Hydra overrides of fedsweep/configs/config.yaml
    grid:                            # dotted config keys → lists of values (a full grid) or domains
      method.theta: [0.05, 0.5]
      method.p: {uniform: [0.2, 0.8]}   # sampled: choice, uniform, loguniform, randint (fedsweep.sweep.search_space)
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
    repeats: 10                      # optional, grid search only: every grid point with seeds 0..9; mean ± 95% CI
    select_seeds: 5                  # optional, with repeats: choose the best configurations on seeds 0..4
    report_seeds: [5, 6, 7, 8, 9]    # optional: and report them on these (default: the repeats' other seeds)

``search: grid`` runs every combination of the lists (Tune's grid search), each ``num_samples``
times, sampling the domains anew each time. ``search: random`` samples every key (a list is a
choice) for ``num_samples`` trials with Tune's BasicVariantGenerator, ``search: optuna`` lets
Optuna's TPE propose them (``OptunaSearch`` on ``metric``/``mode``). ``repeats`` is for grids
only: a sampled configuration runs once (put ``seed`` in the space to vary it).

``select_seeds`` (a list of the repeats' seeds, or ``n`` for the first ``n``) splits the seeds:
configurations are ranked, and each option's best chosen, on the select seeds only, and
``best.csv`` reports the chosen ones on ``report_seeds`` only (a list; by default the repeats'
other seeds), fresh seeds that took no part in the choice. Every configuration still runs
every seed (one Tune grid, no second phase): ``results.csv`` lists them all. The two lists
are disjoint and together the repeats' seeds. ``target/*`` metrics (what it took to first
reach ``target_accuracy``: ``target/round``, ``target/comm_<group>``, ``target/comm_total``) rank
with ``mode: min`` (``fedsweep.sweep.summary``).

Everything here runs before Ray starts, so a bad file costs nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsweep.core.checks import shown
from fedsweep.core import yaml_files
from fedsweep.core.errors import ConfigError
from fedsweep.core.targets import check_plugins
from fedsweep.experiment.metrics import EVERY_ROUND, REPORTED, PER_GROUP, is_reported
from fedsweep.sweep.grid import config_groups, trial_count
from fedsweep.sweep.search_space import KINDS, SCALARS, Domain, is_sampled, parse_value
from fedsweep.sweep.summary import is_target

SWEEP_KEYS = ("name", "plugins", "overrides", "grid", "search", "num_samples", "scheduler", "repeats", "select_seeds",
              "report_seeds", "metric", "mode", "rank", "max_concurrent_trials", "max_trials")  # fmt: skip
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
    select_seeds: tuple[int, ...] = ()  # the seeds that choose the best configurations (empty: every seed)
    report_seeds: tuple[int, ...] = ()  # the seeds best.csv reports them on (empty: every seed)
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

    @property
    def seed_split(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The seeds that select and the seeds that report: both every seed without ``select_seeds``."""
        every = tuple(range(self.repeats))
        return (self.select_seeds, self.report_seeds) if self.select_seeds else (every, every)


def load_sweep(path: str | Path, *, overrides: Sequence[str] = (), name: str | None = None) -> Sweep:
    """Parse and check a sweep file; one-line ConfigError on anything wrong. ``overrides`` (Hydra
    ``key=value``) follow the file's own, and ``name`` replaces its name: both are written into
    the sweep's recorded source, so a resume must repeat them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    text = yaml_files.read_text(path)  # UTF-8 of bounded size
    if overrides or name is not None:
        text += f"\n# from the command line: name={name!r} overrides={list(overrides)!r}\n"
    raw = yaml_files.load(text, path)  # no Python tags, no aliases
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    if name is not None:
        raw = {**raw, "name": name}
    if overrides:
        file_overrides = raw.get("overrides") or []
        if not isinstance(file_overrides, list):
            raise ConfigError(f"{path}: overrides must be a list of key=value strings, got {shown(file_overrides)}")
        raw = {**raw, "overrides": [*file_overrides, *overrides]}
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {shown(unknown[0])}; known: {', '.join(SWEEP_KEYS)}")
    name = raw.get("name", path.stem)
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name.strip(".")):
        raise ConfigError(
            f"{path}: name must be one folder name of letters, digits, '_', '-' or '.' (not only dots), "
            f"got name={shown(name)}"
        )
    overrides = raw.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{path}: overrides must be a list of key=value strings, got {shown(overrides)}")
    try:
        plugins = check_plugins(raw.get("plugins"))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if plugins:  # the packages every trial's _target_ may name (fedsweep.core.targets)
        overrides = [f"plugins=[{','.join(plugins)}]", *overrides]
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
                    raise ConfigError(f"{path}: grid.{key}.{option} must map its keys to non-empty lists, got {shown(inner)}")
            parsed[key] = {str(option): dict(inner or {}) for option, inner in value.items()}
            continue
        try:
            parsed[key] = parse_value(key, value)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    grid = parsed
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be max or min, got mode={shown(mode)}")
    metric = raw.get("metric", "accuracy/test")
    if not is_reported(metric):
        known = ", ".join((*REPORTED, *(t.format("<group>") for t in PER_GROUP)))
        raise ConfigError(f"{path}: metric={shown(metric)} is not a metric runs report; known: {known}")
    if is_target(metric) and mode != "min":
        raise ConfigError(f"{path}: metric={shown(metric)} counts what it took to reach the target (less is better); "
                          f"use mode: min, got mode={shown(mode)}")  # fmt: skip
    rank = raw.get("rank", "last")
    if rank not in ("last", "best"):
        raise ConfigError(f"{path}: rank must be last or best, got rank={shown(rank)}")
    mct = raw.get("max_concurrent_trials")
    if mct is not None and not _positive_int(mct):
        raise ConfigError(f"{path}: max_concurrent_trials must be a positive integer, got {shown(mct)}")
    max_trials = raw.get("max_trials", MAX_TRIALS)
    if not _positive_int(max_trials):
        raise ConfigError(f"{path}: max_trials must be a positive integer, got max_trials={shown(max_trials)}")
    repeats = raw.get("repeats", 1)
    if not _positive_int(repeats):
        raise ConfigError(f"{path}: repeats must be a positive integer, got repeats={shown(repeats)}")
    search = raw.get("search", "grid")
    if search not in SEARCHES:
        raise ConfigError(f"{path}: search must be one of {', '.join(SEARCHES)}, got search={shown(search)}")
    num_samples = raw.get("num_samples", 1)
    if not _positive_int(num_samples):
        raise ConfigError(f"{path}: num_samples must be a positive integer, got num_samples={shown(num_samples)}")
    scheduler = _scheduler(raw.get("scheduler"), path)
    _check_search(path, search, grid, raw, repeats=repeats, num_samples=num_samples)
    if (scheduler is not None or search == "optuna") and metric not in EVERY_ROUND:
        raise ConfigError(
            f"{path}: metric={shown(metric)} is not reported every round, which "
            f"{'search: optuna' if scheduler is None else 'scheduler: asha'} needs; use one of {', '.join(EVERY_ROUND)}"
        )
    if repeats > 1:
        if "seed" in grid:
            raise ConfigError(f"{path}: repeats={repeats} sets the seeds; drop seed from the grid or use repeats: 1")
        grid = {**grid, "seed": list(range(repeats))}
    select_seeds, report_seeds = _seed_split(path, raw, grid, search=search, repeats=repeats)
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
        select_seeds=select_seeds,
        report_seeds=report_seeds,
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


def _seed_split(path: Path, raw: Mapping[str, Any], grid: Mapping[str, Any], *, search: str,
                repeats: int) -> tuple[tuple[int, ...], tuple[int, ...]]:  # fmt: skip
    """``select_seeds`` (a list of seeds, or ``n``: the first ``n``) and ``report_seeds`` (a list;
    default: the other seeds) as two disjoint tuples that together are the repeats' seeds."""
    select, report = raw.get("select_seeds"), raw.get("report_seeds")
    if select is None:
        if report is not None:
            raise ConfigError(f"{path}: report_seeds={shown(report)} needs select_seeds, the seeds that choose what is reported")
        return (), ()
    if search != "grid":
        raise ConfigError(f"{path}: select_seeds={shown(select)} needs search: grid (the repeats' seeds), got search: {search}")
    if repeats <= 1:
        raise ConfigError(f"{path}: select_seeds={shown(select)} needs repeats: N, whose seeds 0..N-1 it splits")
    sampled = next((key for key, value in grid.items() if is_sampled(value)), None)
    if sampled is not None:
        raise ConfigError(f"{path}: select_seeds needs a grid of lists: grid.{sampled} is sampled anew for every seed, "
                          "so no configuration runs on more than one")  # fmt: skip
    if _positive_int(select):
        if select >= repeats:
            raise ConfigError(f"{path}: select_seeds={select} leaves no seed of repeats={repeats} to report on")
        select = list(range(select))
    every = range(repeats)
    for key, seeds in (("select_seeds", select), ("report_seeds", report)):
        if seeds is None:
            continue
        if not (isinstance(seeds, list) and seeds and all(_seed(s) for s in seeds)):
            what = "a non-empty list of seeds" + (", or a number n (the first n)" if key == "select_seeds" else "")
            raise ConfigError(f"{path}: {key} must be {what}, got {key}={shown(seeds)}")
        outside = next((s for s in seeds if s not in every), None)
        if outside is not None:
            raise ConfigError(f"{path}: {key} has seed {outside}, outside the repeats' seeds 0..{repeats - 1} "
                              f"(repeats={repeats})")  # fmt: skip
        twice = next((s for s in seeds if seeds.count(s) > 1), None)
        if twice is not None:
            raise ConfigError(f"{path}: {key} lists seed {twice} twice, got {key}={shown(seeds)}")
    if report is None:
        report = [s for s in every if s not in select]
        if not report:
            raise ConfigError(f"{path}: select_seeds={shown(select)} leaves no seed of repeats={repeats} to report on")
    shared = next((s for s in select if s in report), None)
    if shared is not None:
        raise ConfigError(f"{path}: seed {shared} is in both select_seeds and report_seeds; a seed selects or reports, not both")
    unused = [s for s in every if s not in select and s not in report]
    if unused:
        raise ConfigError(f"{path}: seed {unused[0]} of repeats={repeats} is in neither select_seeds nor report_seeds; "
                          "every seed run must select or report (list it, or lower repeats)")  # fmt: skip
    return tuple(sorted(select)), tuple(sorted(report))


def _seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        raise ConfigError(f"{path}: scheduler must be one of {', '.join(SCHEDULERS)} (or {{name: asha, ...}}), got {shown(name)}")
    unknown = [k for k in spec if k not in ("name", "grace_period", "reduction_factor")]
    if unknown:
        raise ConfigError(f"{path}: unknown key scheduler.{unknown[0]}; known: name, grace_period, reduction_factor")
    grace = spec.get("grace_period", 1)
    if not _positive_int(grace):
        raise ConfigError(f"{path}: scheduler.grace_period must be a positive number of rounds, got {shown(grace)}")
    factor = spec.get("reduction_factor", 4)
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor) and factor > 1):
        raise ConfigError(f"{path}: scheduler.reduction_factor must be a number > 1, got {shown(factor)}")
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
                raise ConfigError(f"{path}: search: optuna chooses among numbers and strings only, got grid.{key}={shown(options)}")
