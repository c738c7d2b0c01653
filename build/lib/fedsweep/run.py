"""Run one experiment: ``python -m fedsweep.run theta=0.01 p=0.5 q=0.5``.

Arguments are Hydra overrides of ``fedsweep/configs/config.yaml`` (``key=value``,
``group=option``, ``+new_key=value``), composed with Hydra's compose API and
checked before anything is written; ``--cfg`` prints the composed config and
exits. The run directory (``results/runs/<time>`` unless ``log_dir=...``) gets
the resolved ``config.yaml``, the TensorBoard scalars and any checkpoints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from fedsweep.config import compose, to_container, validate
from fedsweep.errors import ConfigError, RunError

RUNS_DIR = Path("results") / "runs"


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__.strip())
        return 0
    show_only = "--cfg" in overrides
    try:
        cfg = to_container(compose([arg for arg in overrides if arg != "--cfg"]))
        validate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if show_only:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from fedsweep.experiment import run_experiment  # heavy imports once the config is known good

    log_dir = Path(cfg["log_dir"] or RUNS_DIR / time.strftime("%Y-%m-%d_%H-%M-%S"))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    try:
        final = run_experiment(cfg, log_dir=log_dir)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"TensorBoard logs: {log_dir}   (tensorboard --logdir {log_dir})")
    summary = (
        f"final test accuracy {final['accuracy/test']:.4f}, test loss {final['loss/test']:.4f}, "
        f"communications f={final['comm/f']:.0f} g={final['comm/g']:.0f}"
    )
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
