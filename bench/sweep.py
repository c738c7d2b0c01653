"""The default sweep's wall time against its trials' compute, both measured in this run.

    python bench/sweep.py                       # sweeps/vrcs_grid.yaml
    python bench/sweep.py sweeps/other.yaml

1. **Compute**: every trial of the sweep run in this process one after another with
   ``runtime=local`` and one torch thread (a trial's share of a core), each timed from
   ``run_experiment`` call to return (data, model, rounds, checkpoints, TensorBoard).
2. **Sweep**: ``python -m fedsweep.tune <file> --results <temporary folder>`` as
   ``make sweep`` runs it, timed from spawn to exit: Ray's start, the trials with their
   worker pools, the table and the plots.

It prints the sweep's wall time over (Σ compute / cores). Target (issue 7): ≤ 1.3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compute_seconds(sweep_file: Path) -> list[float]:
    import torch

    from fedsweep.experiment import run_experiment
    from fedsweep.sweep import expand, load_sweep

    torch.set_num_threads(1)
    _, _, points = expand(load_sweep(sweep_file))
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(points):
            cfg = {**cfg, "runtime": {"name": "local", "address": None, "vectorize": cfg["runtime"]["vectorize"]}}
            start = time.perf_counter()
            run_experiment(cfg, log_dir=Path(tmp) / str(i), progress=False)
            seconds.append(time.perf_counter() - start)
    return seconds


def sweep_seconds(sweep_file: Path) -> float:
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="fedsweep-sweep-bench-")}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedsweep.tune", str(sweep_file), "--results", results],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed:\n{done.stderr[-3000:]}")
    return wall


def main(sweep_file: Path) -> None:
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    wall = sweep_seconds(sweep_file)
    compute = compute_seconds(sweep_file)
    per_core = sum(compute) / cores
    print(f"{sweep_file}: {len(compute)} trials, {cores} CPUs\n")
    print("| measured | seconds |")
    print("|---|---:|")
    print(f"| trials' compute in-process (sum; per trial {min(compute):.1f}–{max(compute):.1f}) | {sum(compute):.1f} |")
    print(f"| ... divided by {cores} cores | {per_core:.1f} |")
    print(f"| `python -m fedsweep.tune` wall time | {wall:.1f} |")
    print(f"\nsweep / (compute / cores) = {wall / per_core:.2f} (target <= 1.3)")
    print(f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "sweeps" / "vrcs_grid.yaml")
