"""A run's directory: where its config, TensorBoard scalars and checkpoints go."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

RUNS_DIR = Path("results") / "runs"


def open_run_dir(cfg: dict, log_dir: str | Path | None = None) -> Path:
    """The run's directory (``log_dir``, else the config's, else ``results/runs/<time>``), made,
    with the resolved ``config.yaml`` in it."""
    log_dir = Path(log_dir or cfg["log_dir"] or RUNS_DIR / time.strftime("%Y-%m-%d_%H-%M-%S"))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return log_dir
