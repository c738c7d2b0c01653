"""Start-up of ``fedsweep run runtime=ray`` with and without a kept local Ray (``fedsweep ray start``).

    python bench/ray_daemon.py        # 3 cycles
    python bench/ray_daemon.py 5      # 5 cycles
    python bench/ray_daemon.py 3 --workers 2 runtime.driver_serves=false   # 2 warm workers; the runs' pools of 2

The workload: the default config (digits, MLP, VRCS), ``runtime=ray rounds=1``. A fresh process
does what ``python -m fedsweep.run`` does (compose and check the config, which imports torch,
then ``run_experiment``, then ``exit_now``); the time is from just before it is spawned to the
end of round 1, split into interpreter and imports, config checks, Ray (``ray.init``: a new Ray,
or joining the kept one; then the pool's workers leased or asked for), data, workers (every
worker ready: new actors import torch, warm ones are ready) and round 1. The kept Ray is started
once here (``local_ray.start``: with its warm workers, ``fedsweep.federation.runtime.warm``, in a
private state folder) and stopped at the end by pid; the runs without it see an empty state
folder. Each cycle runs: one with its own Ray, one with the kept Ray (whose warm workers had that
run's time to start), and one more with the kept Ray straight after ("back to back": the warm
workers that replace those the run before used are still starting).

Target (issue 18): with a kept Ray, the end of round 1 in <= 2.5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("imported", "checked", "ray", "data", "workers", "first_round")


def child(spawned: float, overrides: list[str]) -> None:
    imported = time.time()
    from fedsweep.cli import exit_now
    from fedsweep.experiment.config import compose, to_container, validate
    from fedsweep.experiment.loop import run_experiment

    cfg = to_container(compose(["runtime=ray", "rounds=1", *overrides]))
    validate(cfg)
    checked = time.time()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        run_experiment(cfg, log_dir=log_dir, progress=False, timings=timings, checked=True)
    print(json.dumps({"spawned": spawned, "imported": imported, "checked": checked, **timings}))
    exit_now(0)


def one_run(state_dir: str, overrides: list[str]) -> dict:
    env = {**os.environ, "FEDSWEEP_STATE_DIR": state_dir}
    spawned = time.time()
    done = subprocess.run([sys.executable, __file__, "--child", repr(spawned), *overrides], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    stamps = json.loads(done.stdout.strip().splitlines()[-1])
    stamps["exited"] = time.time()
    return stamps


def main(cycles: int, workers: int | str, overrides: list[str]) -> None:
    from fedsweep.federation.runtime import local_ray

    kept_dir, empty_dir = tempfile.mkdtemp(prefix="fsb-kept-"), tempfile.mkdtemp(prefix="fsb-none-")
    os.environ["FEDSWEEP_STATE_DIR"] = kept_dir
    loads = [os.getloadavg()[0]]
    began = time.time()
    state = local_ray.start(workers=workers)
    print(f"kept Ray started in {time.time() - began:.1f} s at {state['address']}", flush=True)
    runs: dict[str, list[dict]] = {"own": [], "kept": [], "back to back": []}
    try:
        for _ in range(cycles):
            for which in runs:
                stamps = one_run(empty_dir if which == "own" else kept_dir, overrides)
                runs[which].append(stamps)
                loads.append(os.getloadavg()[0])
                print(f"{which}: {_line(stamps)}  (load {loads[-1]:.2f})", flush=True)
    finally:
        os.environ["FEDSWEEP_STATE_DIR"] = kept_dir
        _, count = local_ray.stop()
        print(f"kept Ray stopped ({count} processes)")
        shutil.rmtree(kept_dir, ignore_errors=True)
        shutil.rmtree(empty_dir, ignore_errors=True)
    labels = {"kept": "with a kept Ray", "back to back": "with a kept Ray, back to back", "own": "starting its own Ray"}
    for which, label in labels.items():
        rows = runs[which]
        round1 = statistics.median(r["first_round"] - r["spawned"] for r in rows)
        total = statistics.median(r["exited"] - r["spawned"] for r in rows)
        each = ", ".join(f"{r['first_round'] - r['spawned']:.2f}" for r in rows)
        print(f"{label}: end of round 1 median {round1:.2f} s (runs {each}); "
              f"process exit median {total:.2f} s")  # fmt: skip
    print(f"1-min load average: {', '.join(f'{x:.2f}' for x in loads)}")


def _line(stamps: dict) -> str:
    points = [stamps["spawned"], *(stamps[p] for p in PHASES)]
    parts = " + ".join(f"{b - a:.2f}" for a, b in zip(points, points[1:]))
    return (f"round 1 ends at {stamps['first_round'] - stamps['spawned']:.2f} s ({parts}: imports, config, Ray, "
            f"data, workers, round 1); exit at {stamps['exited'] - stamps['spawned']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(float(sys.argv[2]), sys.argv[3:])
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("cycles", nargs="?", type=int, default=3)
        parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                            help="the kept Ray's warm workers (fedsweep ray start --workers)")  # fmt: skip
        parser.add_argument("overrides", nargs="*", help="config overrides for every run")
        args = parser.parse_intermixed_args()
        main(args.cycles, args.workers, args.overrides)
