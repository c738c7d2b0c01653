"""The Python API for notebooks and scripts: one run, or one sweep, in a call.

    import fedsweep
    history = fedsweep.run_experiment({"method": "fedavg", "method.lr": 0.1, "rounds": 5})
    history[["round", "accuracy/test", "comm/total"]].tail()
    table = fedsweep.run_sweep("sweeps/vrcs_grid.yaml", overrides=["rounds=3"], name="quick")

Both check everything first and raise :class:`fedsweep.ConfigError` (one line) on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsweep.experiment.config import compose, to_container, validate
from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError


def make_config(settings: Mapping[str, Any] | Sequence[str] = (), *, config_dirs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The composed, checked config for ``settings``: Hydra overrides (``["method=fedavg",
    "method.lr=0.1"]``) or a mapping of dotted keys to values (``{"method": "fedavg",
    "method.lr": 0.1}``: a config group's key picks its option, other keys set values).
    ``config_dirs`` join Hydra's search path (a user's own config groups and options)."""
    groups, values = [], {}
    if isinstance(settings, Mapping):
        from fedsweep.sweep.grid import config_groups

        names = config_groups()
        for key, value in settings.items():
            (groups.append(f"{key}={value}") if key in names and isinstance(value, str) else values.update({key: value}))
    elif isinstance(settings, str):
        raise ConfigError(f"settings must be a list of key=value overrides or a mapping, got the string {shown(settings)}")
    else:
        groups = list(settings)
    from omegaconf import OmegaConf

    composed = compose(groups, config_dirs=config_dirs)
    missing = object()
    for key, value in values.items():
        if OmegaConf.select(composed, str(key), default=missing) is missing:
            raise ConfigError(f"{shown(key)} is not a config key (see fedsweep/configs/config.yaml)")
        OmegaConf.update(composed, str(key), value, merge=False)
    cfg = to_container(composed)
    validate(cfg)
    return cfg


def run_experiment(
    settings: Mapping[str, Any] | Sequence[str] = (),
    *,
    log_dir: str | Path | None = None,
    config_dirs: Sequence[str | Path] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Run one experiment; returns its metrics history, one row per round (TensorBoard logs and
    the resolved config go to ``log_dir``, by default ``results/runs/<time>``)."""
    from fedsweep.experiment.loop import run_experiment as run
    from fedsweep.experiment.run_dir import open_run_dir

    cfg = make_config(settings, config_dirs=config_dirs)
    log_dir = open_run_dir(cfg, log_dir)
    history: list[dict[str, float]] = []
    run(cfg, log_dir=log_dir, report=history.append, progress=progress)
    return pd.DataFrame(history)


def run_sweep(
    sweep: str | Path | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    name: str | None = None,
    results_dir: str | Path = "results",
    config_dirs: Sequence[str | Path] = (),
    address: str | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep: a sweep file's path, or its contents as a mapping (``{"name": …,
    "grid": {…}, …}``, as in a file); returns the results table, best first (with ``repeats``,
    the summary over seeds is ``table.attrs["summary"]``). Results go to ``results_dir/<name>/``."""
    import tempfile

    import yaml

    from fedsweep.experiment.config import search_path
    from fedsweep.sweep.sweep_file import load_sweep
    from fedsweep.sweep.driver import run_sweep as run

    overrides = [*overrides, *([search_path(config_dirs)] if config_dirs else [])]
    if isinstance(sweep, Mapping):
        with tempfile.TemporaryDirectory() as folder:  # the same checks as a file, the text recorded
            path = Path(folder) / f"{sweep.get('name', 'sweep')}.yaml"
            path.write_text(yaml.safe_dump(dict(sweep), sort_keys=False))
            spec = load_sweep(path, overrides=overrides, name=name)
    else:
        spec = load_sweep(sweep, overrides=overrides, name=name)
    _, table = run(spec, results_dir=Path(results_dir), address=address)
    return table
