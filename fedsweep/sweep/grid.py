"""A sweep's grid: its values per key (a config group's options each with their own grid), the
trials it expands to, Ray Tune's ``param_space``, and the short labels trials are shown by."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any


from fedsweep.experiment import components
from fedsweep.experiment.config import CONFIG_DIR, compose, to_container, validate
from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError
from fedsweep.sweep.search_space import Domain, is_sampled
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsweep.sweep.sweep_file import Sweep


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
                    raise ConfigError(f"grid.{key}.{option}: {shown(sub_key)} is not a key of {key}={option}; known: {', '.join(node)}")
            for combo in itertools.product(*axes.values()):
                sub = copy.deepcopy(node)
                for k, v in zip(axes, combo):
                    _set(sub, k, copy.deepcopy(v))
                nodes.append(sub)
        unused = [k for k in folded[key] if k not in used]
        if unused:
            raise ConfigError(f"grid key {shown(unused[0])} is a key of none of {key}'s options {options}")
        values[key] = nodes
    return values


def expand(sweep: Sweep) -> tuple[dict[str, Any], dict[str, list[Any]], list[dict[str, Any]]]:
    """The base config, the grid's config values and the configs checked before Ray starts, each
    validated: every point of the grid's lists (a grid search) and, against each of them, every
    option and both ends of every sampled key in turn (for a sampled search the lists are choices).
    Each distinct data/partition/model among them is built once, cheaply (``check_setup``).

    Raises ConfigError naming the first bad key or value.
    """
    from fedsweep.experiment.build import check_method, check_setup

    folded = folded_keys(sweep.grid)
    # a grid over a group replaces its node: overrides inside it apply per option (option_config)
    base = to_container(compose([o for o in sweep.overrides if _override_key(o).split(".")[0] not in folded]))
    inner_keys = {k for keys in folded.values() for k in keys}
    for key in sweep.grid:
        if key not in inner_keys and not _has(base, key):
            raise ConfigError(f"grid key {shown(key)} is not a config key (see fedsweep/configs/config.yaml)")
    grid = grid_values(sweep)
    axes = {k: v for k, v in grid.items() if sweep.search == "grid" and not is_sampled(v)}
    trials = trial_count(sweep, grid)
    if trials > sweep.max_trials:
        raise ConfigError(f"the grid makes {trials} trials, more than max_trials={sweep.max_trials}; "
                          f"set max_trials: {trials} in the file to run them all")  # fmt: skip
    sampled = {k: (v.candidates() if isinstance(v, Domain) else list(v)) for k, v in grid.items() if k not in axes}
    variations = [{k: c[0] for k, c in sampled.items()}]
    variations += [{**variations[0], key: value} for key, options in sampled.items() for value in options[1:]]
    points, built = [], {}
    for values in itertools.product(*axes.values()):
        for variation in variations:
            cfg = copy.deepcopy(base)
            for key, value in [*zip(axes, values), *variation.items()]:
                _set(cfg, key, copy.deepcopy(value))
            validate(cfg)
            fixed = repr([cfg[k] for k in ("data", "partition", "model", "loss", "device")])  # seeds aside
            if fixed not in built:
                built[fixed] = check_setup(cfg)
            check_method(cfg, built[fixed])  # what the method needs of that federation
            points.append(cfg)
    if sweep.metric.startswith("target/") and any(p["target_accuracy"] is None for p in points):
        raise ConfigError(f"metric={shown(sweep.metric)} is what it took to reach target_accuracy, which is null; set target_accuracy")
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
