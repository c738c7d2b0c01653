"""A realistic workload at the machine's limit: a plain one-thread loop, ``runtime=local`` and ``runtime=ray``.

    python bench/realistic.py                          # pfl-style: 1,000 clients x 50, 50 per round
    python bench/realistic.py --shape ten              # 10 clients x 500 images, all every round
    python bench/realistic.py --model resnet18 --rounds 3 --repeats 1
    python bench/realistic.py --env OMP_WAIT_POLICY=PASSIVE   # an environment for every process

The workload is pfl-research's simulator benchmark (arXiv:2404.06430) on random data:
CIFAR-10-shaped images (``data=random_images``: N(0, 1) pixels, uniform labels, seeded),
1,000 IID clients of 50 images with 50 sampled per round (``--shape ten``: 10 clients of 500,
all taking part), FedAvg with 1 local epoch of SGD (lr 0.1, batch 10), the CNN
Conv(3,32,3)-ReLU-MaxPool-Conv(32,64,3)-ReLU-MaxPool-Linear(2304,128)-ReLU-Linear(128,10)
(``model=cifar_cnn``; ``--model resnet18``: ResNet-18 with GroupNorm), test evaluation on
2,000 images every round. Speed does not depend on the values.

Three variants, each run as a fresh process (``python <this file> --child …``) so that its
start-up and memory are its own, taking turns in every repeat (the order rotates):

* **plain**: a plain PyTorch loop with one torch thread (``bench/plain_fedavg.py``): the baseline;
  it evaluates the test set in one forward pass (``--plain-eval-piece N``: in pieces of N, as
  fedsweep evaluates a convolutional model in pieces of 64);
* **local**: ``run_experiment`` with ``runtime=local`` (torch's default threads, one per core);
* **ray**: ``run_experiment`` with ``runtime=ray runtime.workers=W`` (a Ray of its own, in a
  private ``RAY_TMPDIR``; the driver keeps one thread). ``--workers auto`` (the default) is
  the default pool: on 2 cores one worker, with the driver serving the other share
  (``runtime.driver_serves``); ``--workers 2``: two workers, the driver coordinating.

Per round: the median over rounds 2 … N of the time between the ends of consecutive rounds,
and its ratio to the plain loop's in the same repeat. Start-up: from spawning the process to
the end of round 1, minus one median round, with its parts (``run_experiment``'s ``timings``).
Where the time goes, per round: client training (the runtime's ``map_reduce``, timed in the
driver), the method's own work around it (sampling, the average), evaluation, and the rest
(logging); and the CPU seconds of the driver, each Ray worker and Ray's own processes over
the round (``/proc/<pid>/stat``), as a share of the round: a worker at 0.5 is idle half the
round. Memory: the peak PSS summed over the variant's process tree, sampled every 0.2 s.
Before the timings, a check child runs fedsweep's first round and the plain loop on the
same clients and example order and prints the largest difference of the models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from process_tree import PeakPss, command, tree_cpu  # bench/process_tree.py (this folder is on sys.path)

VARIANTS = ("plain", "local", "ray")
MARK = "RESULT "


def overrides(opts: dict) -> list[str]:
    """The workload as fedsweep config overrides."""
    clients, size, sampled = (1000, 50, 50) if opts["shape"] == "pfl" else (10, 500, None)
    model = "cifar_cnn" if opts["model"] == "cnn" else "resnet18"
    return [
        "data=random_images", f"data.num_examples={clients * size}", "data.test_examples=2000", f"model={model}",
        "partition=iid", f"partition.clients={clients}", "method=fedavg", "method.local_epochs=1", "method.lr=0.1",
        "method.batch_size=10", f"method.participation={'null' if sampled is None else sampled}",
        f"rounds={opts['rounds']}", "target_accuracy=null", "seed=0", f"device={opts['device']}",
    ]  # fmt: skip


# -- the children -----------------------------------------------------------------------------


class RoundClock:
    """Stamps each round's end with the time parts and the CPU seconds of the process tree so far."""

    def __init__(self) -> None:
        self.parts = {"train": 0.0, "method": 0.0, "evaluate": 0.0}
        self.rounds: list[dict] = []
        self.gpu: dict[int, float] = {}
        self.commands: dict[int, str] = {}  # read while the processes live (Ray's end with the run)

    def timed(self, part: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - start

        return wrapper

    def stamp(self, *_: object) -> None:
        self.rounds.append({"end": time.time(), **self.parts, "cpu": tree_cpu(os.getpid())})
        self.commands.update({pid: command(pid)[:80] for pid in self.rounds[-1]["cpu"] if pid not in self.commands})
        self.gpu = {pid: max(mb, self.gpu.get(pid, 0.0)) for pid, mb in gpu_memory_mb().items()}


def gpu_memory_mb() -> dict[int, float]:
    """GPU memory per process (``nvidia-smi``), {} without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(p): float(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)}


def plain_child(opts: dict, stamps: dict) -> dict:
    import numpy as np
    import torch

    from plain_fedavg import evaluate, plain_round, shards_of
    from fedsweep.task.datasets import random_images
    from fedsweep.task.models import build_model

    torch.set_num_threads(1)
    device = torch.device(opts["device"])
    clients, size, sampled = (1000, 50, 50) if opts["shape"] == "pfl" else (10, 500, 10)
    bundle = random_images(num_examples=clients * size, test_examples=2000, seed=0)
    x_train, y_train = bundle.train.x.to(device), bundle.train.y.to(device)
    test = (bundle.test.x.to(device), bundle.test.y.to(device))
    stamps["data"] = time.time()
    name = "cifar_cnn" if opts["model"] == "cnn" else "resnet18"
    model = build_model(name, input_shape=bundle.input_shape, num_classes=10, seed=0).to(device)
    x = [p.detach().clone() for p in model.parameters()]
    stamps["model"] = time.time()
    starts = np.arange(clients + 1) * size
    shards = shards_of(x_train, y_train, starts)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    clock = RoundClock()
    for _ in range(opts["rounds"]):
        chosen = np.sort(rng.choice(clients, size=sampled, replace=False))
        orders = [torch.randperm(size, generator=gen).to(device) for _ in chosen]
        weights = [1.0 / sampled] * sampled  # n_i / Σ_S n_j with equal shards
        start = time.perf_counter()
        x, parts = plain_round(model, x, shards, chosen.tolist(), orders, weights, lr=0.1, batch_size=10)
        clock.parts["method"] += time.perf_counter() - start
        clock.parts["train"] += parts["train"]
        start = time.perf_counter()
        evaluate(model, x, test, opts["plain_eval_piece"])
        clock.parts["evaluate"] += time.perf_counter() - start
        clock.stamp()
    stamps["first_round"] = clock.rounds[0]["end"]
    return {"rounds": clock.rounds, "gpu": clock.gpu, "commands": clock.commands}


def fedsweep_child(opts: dict, stamps: dict, variant: str) -> dict:
    from fedsweep.algorithms.fedavg import FedAvg
    from fedsweep.experiment import loop
    from fedsweep.experiment.config import compose, to_container, validate

    runtime = ["runtime=local"] if variant == "local" else ["runtime=ray", f"runtime.workers={opts['workers']}"]
    cfg = to_container(compose(overrides(opts) + runtime + opts["fedsweep"]))
    validate(cfg)
    stamps["checked"] = time.time()
    clock = RoundClock()
    if variant == "ray":
        from fedsweep.federation.runtime.ray_runtime import RayRuntime as Runtime
    else:
        from fedsweep.federation.runtime.local import LocalRuntime as Runtime
    Runtime.map_reduce = clock.timed("train", Runtime.map_reduce)
    FedAvg.round = clock.timed("method", FedAvg.round)
    loop._evaluate = clock.timed("evaluate", loop._evaluate)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        loop.run_experiment(cfg, log_dir=log_dir, report=clock.stamp, progress=False, timings=timings, checked=True)
    stamps.update(timings)
    return {"rounds": clock.rounds, "gpu": clock.gpu, "commands": clock.commands}


def child(variant: str, opts: dict, spawned: float) -> None:
    stamps = {"spawned": spawned, "imported": time.time()}
    if variant == "check":
        from plain_fedavg import check

        engines = {"default engine": [], "one client at a time": ["runtime.vectorize=false"]}
        found = {name: check(overrides(opts) + opts["fedsweep"] + extra) for name, extra in engines.items()}
        print(MARK + json.dumps(found), flush=True)
        return
    result = plain_child(opts, stamps) if variant == "plain" else fedsweep_child(opts, stamps, variant)
    print(MARK + json.dumps({"stamps": stamps, "driver": os.getpid(), **result}), flush=True)


# -- the parent -------------------------------------------------------------------------------


def spawn(variant: str, opts: dict, env: dict[str, str]) -> dict:
    """Run one variant's child; its JSON result with the tree's peak PSS and its exit time."""
    ray_dir = tempfile.mkdtemp(prefix="fedsweep-realistic-")  # this child's Ray only
    env = {**os.environ, **env, "RAY_TMPDIR": ray_dir}
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child", variant, json.dumps(opts), repr(spawned)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    sampler = PeakPss(proc.pid)
    out, err = proc.communicate(timeout=3600)
    exited = time.time()
    peak = sampler.stop()
    shutil.rmtree(ray_dir, ignore_errors=True)
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{err[-3000:]}")
    return {**json.loads(lines[-1][len(MARK):]), "peak_pss_gb": peak, "at_peak": sampler.at_peak, "exited": exited}


def summarise(result: dict, variant: str) -> dict:
    """Per-round figures of one child: round times (rounds 2…N), parts and CPU shares."""
    rounds, commands = result["rounds"], {int(k): v for k, v in result["commands"].items()}
    driver = result["driver"]
    per, cpu = [], []
    for a, b in zip(rounds, rounds[1:]):
        wall = b["end"] - a["end"]
        parts = {k: b[k] - a[k] for k in ("train", "method", "evaluate")}
        per.append({"round": wall, "train": parts["train"], "method": parts["method"] - parts["train"],
                    "evaluate": parts["evaluate"], "other": wall - parts["method"] - parts["evaluate"]})  # fmt: skip
        used = {int(p): b["cpu"][p] - a["cpu"].get(p, 0.0) for p in b["cpu"]}
        workers = sorted((u for p, u in used.items() if "Worker" in commands.get(p, "")), reverse=True)
        cpu.append({"driver": used.get(driver, 0.0) / wall, "workers": [u / wall for u in workers],
                    "ray": sum(u for p, u in used.items() if p != driver and "Worker" not in commands.get(p, "")) / wall})  # fmt: skip
    median_round = statistics.median(p["round"] for p in per)
    stamps = result["stamps"]
    startup = stamps["first_round"] - stamps["spawned"] - median_round
    if variant == "plain":
        names, keys = ["interpreter", "torch + data", "model"], ["spawned", "imported", "data", "model"]
    else:
        names = ["interpreter", "config checks", "Ray (or runtime) start", "data", "workers"]
        keys = ["spawned", "imported", "checked", "ray", "data", "workers"]
    phases = {n: stamps[b] - stamps[a] for n, a, b in zip(names, keys, keys[1:])}
    phases["round 1 beyond a round"] = stamps["first_round"] - stamps[keys[-1]] - median_round
    return {"round": median_round, "per": per, "commands": commands, "cpu": cpu, "startup": startup, "phases": phases,
            "exit": result["exited"] - rounds[-1]["end"], "pss": result["peak_pss_gb"], "at_peak": result["at_peak"],
            "gpu": result["gpu"]}  # fmt: skip


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    med = statistics.median(values)
    return fmt.format(med) + (f" ({fmt.format(min(values))}–{fmt.format(max(values))})" if len(values) > 1 else "")


def report(runs: dict[str, list[dict]], opts: dict) -> None:
    plain = runs["plain"]
    print("\n| variant | per round s | vs plain loop | start-up s | exit s | peak PSS GB | PSS vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, rs in runs.items():
        ratio = [r["round"] / p["round"] for r, p in zip(rs, plain)]
        pss = [r["pss"] / p["pss"] for r, p in zip(rs, plain)]
        print(f"| {variant} | {spread([r['round'] for r in rs])} | {spread(ratio)} | {spread([r['startup'] for r in rs], '{:.1f}')} "
              f"| {spread([r['exit'] for r in rs], '{:.1f}')} | {spread([r['pss'] for r in rs])} | {spread(pss)} |")  # fmt: skip
    print("\nstart-up parts, s (median of repeats):")
    for variant, rs in runs.items():
        parts = {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]}
        print(f"  {variant}: " + " + ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print("\npeak PSS by process, MB (the last repeat, at its peak):")
    for variant, rs in runs.items():
        print(f"  {variant}: " + ", ".join(f"{name.split(' {')[0]} {kb / 1024:.0f}" for name, kb in rs[-1]["at_peak"]))
    print("\nwhere a round goes, s (median over rounds 2…N of every repeat); CPU as a share of the round:")
    print("| variant | round | client training | method (sampling, average) | evaluation | other | "
          "driver CPU | workers' CPU | Ray's processes CPU |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, rs in runs.items():
        per = [p for r in rs for p in r["per"]]
        cpu = [c for r in rs for c in r["cpu"]]
        med = {k: statistics.median(p[k] for p in per) for k in per[0]}
        slots = max(len(c["workers"]) for c in cpu)
        workers = " / ".join(f"{statistics.median(c['workers'][i] for c in cpu if len(c['workers']) > i):.2f}"
                             for i in range(slots)) or "–"  # fmt: skip
        print(f"| {variant} | {med['round']:.2f} | {med['train']:.2f} | {med['method']:.3f} | {med['evaluate']:.3f} | "
              f"{med['other']:.3f} | {statistics.median(c['driver'] for c in cpu):.2f} | {workers} | "
              f"{statistics.median(c['ray'] for c in cpu):.2f} |")  # fmt: skip
    for variant, rs in runs.items():
        if variant == "ray":
            print(f"processes of the last ray run: {sorted(set(rs[-1]['commands'].values()))}")
    if opts["device"] == "cuda":
        for variant, rs in runs.items():
            print(f"GPU memory per process, MiB ({variant}): {rs[-1]['gpu']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("pfl", "ten"), default="pfl")
    parser.add_argument("--model", choices=("cnn", "resnet18"), default="cnn")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=lambda v: v if v == "auto" else int(v), default="auto",
                        help="runtime.workers for the ray variant (default auto: the default pool)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every child process")
    parser.add_argument("--fedsweep", action="append", default=[], help="an override for fedsweep's runs, "
                        "e.g. runtime.vectorize=false")  # fmt: skip
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a subset, e.g. plain,local")
    parser.add_argument("--no-check", action="store_true", help="skip the check against the plain loop")
    parser.add_argument("--plain-eval-piece", type=int, default=None, help="the plain loop evaluates in pieces of "
                        "this many examples (default: the whole test set in one pass)")  # fmt: skip
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: skipped, torch.cuda.is_available() is False on this machine")
            return
    opts = {k: getattr(args, k) for k in ("shape", "model", "rounds", "workers", "device", "fedsweep", "plain_eval_piece")}
    env = dict(item.split("=", 1) for item in args.env)
    variants = args.variants.split(",")
    print(f"{opts}; env {env or 'as is'}; {os.cpu_count()} CPUs; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)  # fmt: skip
    if not args.no_check:
        found = spawn("check", opts, env)
        print("check: round 1 of fedsweep's FedAvg (runtime=local) against the plain loop on the same clients "
              "and example order")  # fmt: skip
        for name in ("default engine", "one client at a time"):
            print(f"  {name}: {found[name]}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants[repeat % len(variants):] + variants[: repeat % len(variants)]:
            runs[variant].append(summarise(spawn(variant, opts, env), variant))
            r = runs[variant][-1]
            print(f"  repeat {repeat + 1} {variant}: {r['round']:.2f} s/round, start-up {r['startup']:.1f} s, "
                  f"peak PSS {r['pss']:.2f} GB; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    report(runs, opts)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
