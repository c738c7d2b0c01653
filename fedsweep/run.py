"""Run one experiment: ``python -m fedsweep.run method.theta=0.05 method.p=0.5 method.q=0.5``.

Arguments are Hydra overrides of ``fedsweep/configs/config.yaml`` (``key=value``,
``group=option``, ``+new_key=value``), composed with Hydra's compose API and
checked before anything is written; ``--cfg`` prints the composed config and
exits; ``--config-dir DIR`` (repeatable) adds a folder of your own config groups and
options to Hydra's search path (as ``hydra.searchpath=[file://DIR]`` does). The run directory
(``results/runs/<time>`` unless ``log_dir=...``) gets the resolved ``config.yaml``, the
TensorBoard scalars and, with ``checkpoint.every=N``, its newest ``checkpoint.keep``
checkpoints (``checkpoints/round_<round>/checkpoint.pt``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from fedsweep.config import compose, to_container, validate
from fedsweep.errors import ConfigError, RunError

RUNS_DIR = Path("results") / "runs"


def split_config_dirs(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` without its ``--config-dir DIR`` / ``--config-dir=DIR`` options, and those DIRs."""
    rest, dirs, it = [], [], iter(args)
    for arg in it:
        if arg == "--config-dir":
            value = next(it, None)
            if value is None:
                raise ConfigError("--config-dir needs a folder")
            dirs.append(value)
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, dirs


def open_run_dir(cfg: dict, log_dir: str | Path | None = None) -> Path:
    """The run's directory (``log_dir``, else the config's, else ``results/runs/<time>``), made,
    with the resolved ``config.yaml`` in it."""
    log_dir = Path(log_dir or cfg["log_dir"] or RUNS_DIR / time.strftime("%Y-%m-%d_%H-%M-%S"))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return log_dir


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__.strip())
        return 0
    show_only = "--cfg" in overrides
    try:
        overrides, config_dirs = split_config_dirs([arg for arg in overrides if arg != "--cfg"])
        cfg = to_container(compose(overrides, config_dirs=config_dirs))
        validate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if show_only:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from fedsweep.experiment import run_experiment  # heavy imports once the config is known good

    log_dir = open_run_dir(cfg)
    try:
        final = run_experiment(cfg, log_dir=log_dir)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"TensorBoard logs: {log_dir}   (tensorboard --logdir {log_dir})")
    from fedsweep.checkpoint import checkpoint_path, saved_rounds

    saved = saved_rounds(log_dir)
    if saved:
        newest = checkpoint_path(log_dir, saved[-1])
        print(f"Checkpoints: rounds {', '.join(map(str, saved))} kept; continue with checkpoint.resume={newest}")
    accuracy = f"test accuracy {final['accuracy/test']:.4f}, " if "accuracy/test" in final else ""
    summary = f"final {accuracy}test loss {final['loss/test']:.4f}, communications f={final['comm/f']:.0f} g={final['comm/g']:.0f}"
    if cfg["target_accuracy"] is not None:
        reached = final["target/round"] == final["target/round"]  # not NaN
        summary += (
            f"; target {cfg['target_accuracy']} reached at round {final['target/round']:.0f} "
            f"after f={final['target/comm_f']:.0f} g={final['target/comm_g']:.0f} communications"
            if reached
            else f"; target {cfg['target_accuracy']} not reached"
        )
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
