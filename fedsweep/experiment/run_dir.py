"""A run's directory: where its config, TensorBoard scalars and checkpoints go.

A run folder is never silently reused: a run writes into a new or empty folder, or into the
folder of the run it resumes (``checkpoint.resume`` naming one of that folder's checkpoints,
whose config the run was checked against). Anything else that already holds files stops with
one line, before anything is written, so a second run cannot replace the first one's config,
curves or checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from fedsweep.core.errors import ConfigError

RUNS_DIR = Path("results") / "runs"


def run_dir(cfg: dict, log_dir: str | Path | None = None) -> Path:
    """The run's directory: ``log_dir``, else the config's, else a new ``results/runs/<time>``."""
    if log_dir or cfg["log_dir"]:
        return Path(log_dir or cfg["log_dir"])
    stamp = RUNS_DIR / time.strftime("%Y-%m-%d_%H-%M-%S")
    path, n = stamp, 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = stamp.with_name(f"{stamp.name}_{n}")
    return path


def check_run_dir(cfg: dict, log_dir: str | Path | None = None) -> Path:
    """The run's directory (:func:`run_dir`), checked without writing: new, empty, or the folder of
    the checkpoint ``checkpoint.resume`` names; otherwise a one-line ConfigError saying how to
    continue the run it holds or to choose another ``log_dir``."""
    path = run_dir(cfg, log_dir)
    if not path.exists():
        return path
    if not path.is_dir():
        raise ConfigError(f"log_dir {path} is a file, not a folder; choose another log_dir")
    if not any(path.iterdir()):
        return path
    resume = cfg["checkpoint"]["resume"]
    if resume is not None and Path(resume).resolve().is_relative_to(path.resolve()):
        return path  # resuming the run this folder holds
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"log_dir {path} is a folder that holds other files; choose a new or empty log_dir")
    from fedsweep.experiment.checkpoint import checkpoint_path, saved_rounds

    saved = saved_rounds(path)
    how = (f"continue it with checkpoint.resume={checkpoint_path(path, saved[-1])} or choose another log_dir"
           if saved else "it has no checkpoint to continue from; choose another log_dir")  # fmt: skip
    raise ConfigError(f"log_dir {path} holds a run already (nothing of it is changed); {how}")


def open_run_dir(cfg: dict, log_dir: str | Path | None = None) -> Path:
    """The run's directory (:func:`check_run_dir`), made, with the resolved ``config.yaml`` in it."""
    path = check_run_dir(cfg, log_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return path
