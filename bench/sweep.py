"""The default sweep's wall time against its trials' compute, both measured in this run.

    python bench/sweep.py                       # sweeps/vrcs_grid.yaml
    python bench/sweep.py sweeps/other.yaml

1. **Compute**: every trial of the sweep run in this process one after another with
   ``runtime=local`` and one torch thread (a trial's share of a core), each timed from
   ``run_experiment`` call to return (data, model, rounds, checkpoints, TensorBoard).
2. **Sweep**: a fresh process runs ``fedsweep.cli.tune_main([<file>, --results <temporary
   folder>])``, what ``make sweep`` runs, timed from spawn to exit, with its parts:
   interpreter and imports, sweep file checks, ``ray.init`` (with the dashboard),
   ``Tuner.fit`` (every trial), ``ray.shutdown``, the table and plots.

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

    from fedsweep.experiment.loop import run_experiment
    from fedsweep.sweep.sweep_file import load_sweep
    from fedsweep.sweep.grid import expand

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


def sweep_child(sweep_file: str, results: str) -> None:
    """Run the sweep as ``python -m fedsweep.tune`` does, stamping its phases (prints JSON)."""
    stamps = {"imports": time.time()}
    import json

    import ray
    from ray import tune

    from fedsweep.sweep import report
    from fedsweep.cli import tune_main

    stamps["imports"] = time.time()

    def stamped(name, fn):
        def wrapper(*args, **kwargs):
            stamps.setdefault(f"{name} start", time.time())
            try:
                return fn(*args, **kwargs)
            finally:
                stamps[f"{name} end"] = time.time()

        return wrapper

    ray.init = stamped("ray.init", ray.init)
    ray.shutdown = stamped("ray.shutdown", ray.shutdown)
    tune.Tuner.fit = stamped("fit", tune.Tuner.fit)
    report.write_report = stamped("report", report.write_report)
    status = tune_main([sweep_file, "--results", results])
    print(json.dumps({**stamps, "status": status}))


def sweep_seconds(sweep_file: Path) -> tuple[float, dict[str, float]]:
    import json

    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="fedsweep-sweep-bench-")}
        start = time.time()
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(sweep_file), results],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"the sweep failed:\n{done.stderr[-3000:]}")
    stamps = json.loads(done.stdout.strip().splitlines()[-1])
    order = ["imports", "ray.init start", "ray.init end", "fit end", "ray.shutdown end", "report end"]
    names = ["interpreter and imports", "sweep file checks", "ray.init", "Tuner.fit (the trials)", "ray.shutdown",
             "table and plots"]  # fmt: skip
    times = [start] + [stamps[k] for k in order]
    return wall, {name: b - a for name, a, b in zip(names, times, times[1:])}


def main(sweep_file: Path) -> None:
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    wall, parts = sweep_seconds(sweep_file)
    compute = compute_seconds(sweep_file)
    per_core = sum(compute) / cores
    print(f"{sweep_file}: {len(compute)} trials, {cores} CPUs\n")
    print("| measured | seconds |")
    print("|---|---:|")
    print(f"| trials' compute in-process (sum; per trial {min(compute):.1f}–{max(compute):.1f}) | {sum(compute):.1f} |")
    print(f"| ... divided by {cores} cores | {per_core:.1f} |")
    print(f"| `python -m fedsweep.tune` wall time | {wall:.1f} |")
    for name, seconds in parts.items():
        print(f"| ... {name} | {seconds:.1f} |")
    print(f"\nsweep / (compute / cores) = {wall / per_core:.2f} (target <= 1.3)")
    print(f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sweep_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "sweeps" / "vrcs_grid.yaml")
