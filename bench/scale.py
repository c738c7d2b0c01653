"""Virtual clients at scale: FedAvg on digits with K = 4 … 1024 clients, the Ray pool against a plain loop.

    python bench/scale.py              # K = 4, 16, 64, 256, 1024
    python bench/scale.py 4 256        # chosen K

The workload: scikit-learn's digits, MLP 64-128-128-10 (``model=mlp model.hidden=128``),
K IID clients in one population, FedAvg with 1 local epoch of plain SGD (lr 0.1,
batch 32), test evaluation every round. For each K, in the same run:

* **plain loop**: one process doing the same arithmetic one client at a time with plain
  torch (copy x into the model, one epoch of minibatch SGD, example-weighted average,
  evaluate): the baseline, median seconds per round.
* **in-process**: ``runtime=local`` through ``fedsweep.experiment.loop.run_experiment``.
* **pool**: a fresh process does what ``python -m fedsweep.run runtime=ray …`` does
  (compose and check the config, then ``run_experiment``; W = ``runtime.workers: auto``
  = one per CPU). Per round (all three): the median over
  rounds 11 … 40. Start-up: from just before the process is spawned to the end of round 1,
  split into interpreter and imports (no torch yet), config checks (compose and
  ``validate``, which imports torch), Ray (``ray.init``; the data loads meanwhile on a
  thread), data (what is left of loading, partition, model, server, clients attached;
  overlapped with the workers' boot), workers (the rest of the wait for every worker to
  be ready) and round 1. Memory: the peak over the run of the proportional set size
  (``/proc/<pid>/smaps_rollup``) summed over the process and all its descendants:
  Ray's GCS, raylet, agents and the workers.

Targets (issue 7): per round ≤ 1.5× the plain loop, start-up ≤ 5 s, peak PSS ≤ 2 GB.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from process_tree import descendants, pss_kb  # bench/process_tree.py (this folder is on sys.path)

ROUNDS = 40
WARMUP = 10  # rounds left out of the per-round medians (caches, allocator, first calls)
KS = (4, 16, 64, 256, 1024)


def workload(k: int, rounds: int) -> list[str]:
    return [
        "data=digits", "model=mlp", "model.hidden=128", "model.activation=relu", "partition=iid",
        f"partition.clients={k}",
        "method=fedavg", "method.local_epochs=1", "method.lr=0.1", "method.batch_size=32",
        f"rounds={rounds}", "target_accuracy=null", "seed=0",
    ]  # fmt: skip


# -- the plain loop ------------------------------------------------------------------------


def plain_loop_seconds(k: int, rounds: int) -> float:
    """Median seconds per round of FedAvg written as a plain per-client loop."""
    import torch
    import torch.nn.functional as F

    from fedsweep.experiment.config import compose, to_container
    from fedsweep.experiment.build import prepare

    setup = prepare(to_container(compose(workload(k, rounds))))
    model = setup.model_fn()
    x = [p.detach().clone() for p in model.parameters()]
    groups = list(setup.partition.clients.values())
    test = setup.bundle.test
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        total = sum(len(s) for shards in groups for s in shards)
        mean = [torch.zeros_like(t) for t in x]
        for shards in groups:
            for shard in shards:
                with torch.no_grad():
                    for p, t in zip(model.parameters(), x):
                        p.copy_(t)
                order = torch.randperm(len(shard), generator=gen)
                for lo in range(0, len(shard), 32):
                    idx = order[lo : lo + 32]
                    model.zero_grad()
                    F.cross_entropy(model(shard.x[idx]), shard.y[idx]).backward()
                    with torch.no_grad():
                        for p in model.parameters():
                            p.sub_(p.grad, alpha=0.1)
                with torch.no_grad():
                    for m, p in zip(mean, model.parameters()):
                        m.add_(p, alpha=len(shard) / total)
        x = mean
        with torch.no_grad():
            for p, t in zip(model.parameters(), x):
                p.copy_(t)
            logits = model(test.x)
            F.cross_entropy(logits, test.y).item(), (logits.argmax(1) == test.y).float().mean().item()
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:])


def run_seconds(cfg: dict) -> tuple[list[float], dict[str, float]]:
    """Round-to-round seconds of a fedsweep run, and its start-up stamps."""
    from fedsweep.experiment.loop import run_experiment

    stamps: list[float] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        run_experiment(
            cfg, log_dir=log_dir, report=lambda m: stamps.append(time.time()), progress=False, timings=timings
        )  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:])], timings


def config_for(overrides: list[str]) -> dict:
    from fedsweep.experiment.config import compose, to_container, validate

    cfg = to_container(compose(overrides))
    validate(cfg)
    return cfg


# -- the pool, in its own process ------------------------------------------------------------


def pool_child(k: int, rounds: int, spawned: float) -> None:
    """What ``python -m fedsweep.run runtime=ray …`` does, with its start-up stamped (prints
    JSON): compose and check the config (this imports torch), then ``run_experiment``,
    which starts Ray while the data loads on a thread."""
    imported_at = time.time()
    cfg = config_for(workload(k, rounds) + ["runtime=ray"])
    checked_at = time.time()
    per_round, timings = run_seconds(cfg)
    print(json.dumps({"spawned": spawned, "imported": imported_at, "checked": checked_at, "per_round": per_round, **timings}))


def pool_run(k: int, rounds: int) -> dict:
    """Spawn the pool's process, sample its tree's PSS every 0.2 s, return its stamps and the peak."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="fedsweep-scale-")}  # this run's Ray only
    spawned = time.time()
    child = subprocess.Popen(
        [sys.executable, __file__, "--pool", str(k), str(rounds), repr(spawned)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], sum(pss_kb(p) for p in descendants(child.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate(timeout=900)
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"pool run for K={k} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_pss_gb"] = peak[0] / 2**20
    return result


def main(ks: list[int]) -> None:
    load_before = os.getloadavg()[0]
    print(
        f"FedAvg on digits, MLP 64-128-128-10, 1 local epoch (lr 0.1, batch 32), {ROUNDS} rounds; "
        f"{os.cpu_count()} CPUs; pool W = runtime.workers auto\n"
    )
    print(
        "| K | plain loop ms/round | in-process ms/round | pool ms/round | pool / plain loop | "
        "start-up s (imports + config checks + Ray + data + workers + round 1) | peak PSS GB |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|")
    worst = {"ratio": 0.0, "startup": 0.0, "pss": 0.0}
    for k in ks:
        loop = plain_loop_seconds(k, ROUNDS)
        local, _ = run_seconds(config_for(workload(k, ROUNDS) + ["runtime=local"]))
        pool = pool_run(k, ROUNDS)
        pool_round = statistics.median(pool["per_round"][WARMUP:])
        parts = [
            pool["imported"] - pool["spawned"],
            pool["checked"] - pool["imported"],
            pool["ray"] - pool["checked"],
            pool["data"] - pool["ray"],
            pool["workers"] - pool["data"],
            pool["first_round"] - pool["workers"],
        ]
        startup = pool["first_round"] - pool["spawned"]
        ratio = pool_round / loop
        worst = {"ratio": max(worst["ratio"], ratio), "startup": max(worst["startup"], startup),
                 "pss": max(worst["pss"], pool["peak_pss_gb"])}  # fmt: skip
        print(
            f"| {k} | {1e3 * loop:.1f} | {1e3 * statistics.median(local[WARMUP:]):.1f} | {1e3 * pool_round:.1f} | "
            f"{ratio:.2f} | {startup:.1f} ({' + '.join(f'{p:.1f}' for p in parts)}) | {pool['peak_pss_gb']:.2f} |",
            flush=True,
        )
    print(
        f"\nworst: pool/plain {worst['ratio']:.2f} (target <= 1.5), start-up {worst['startup']:.1f} s "
        f"(target <= 5), peak PSS {worst['pss']:.2f} GB (target <= 2)"
    )
    print(f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pool"]:
        pool_child(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main([int(a) for a in sys.argv[1:]] or list(KS))
