"""Run one experiment: ``python -m fedsweep.run theta=0.01 p=0.5 q=0.5``.

Configs compose from ``configs/`` (Hydra); any key can be overridden. TensorBoard
logs go to Hydra's run directory (``results/runs/<time>``) unless ``log_dir`` is set.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsweep.config import CONFIG_DIR, validate
from fedsweep.errors import ConfigError


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from fedsweep.experiment import run_experiment  # heavy imports after the config is known good

    log_dir = cfg.log_dir or HydraConfig.get().runtime.output_dir
    final = run_experiment(cfg, log_dir=log_dir)
    print(f"TensorBoard logs: {log_dir}   (tensorboard --logdir {log_dir})")
    print(f"final test accuracy {final['accuracy/test']:.4f}, test loss {final['loss/test']:.4f}, "
          f"communications f={final['comm/f']:.0f} g={final['comm/g']:.0f}")


if __name__ == "__main__":
    main()
