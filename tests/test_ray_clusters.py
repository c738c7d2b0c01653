"""Ray clusters of other shapes: two nodes (the numbers do not change) and GPU shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsweep.config import compose
from fedsweep.experiment import run_experiment

# four clients at 0.5 CPU on two 1-CPU nodes: two clients per node
OVERRIDES = ["rounds=2", "server.epochs=1", "client.num_cpus=0.5", "seed=5"]


def test_two_node_cluster_gives_the_local_numbers(tmp_path):
    script = Path(__file__).with_name("ray_cluster_run.py")
    done = subprocess.run(
        [sys.executable, str(script), "two-nodes", *OVERRIDES, "runtime=ray"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    assert remote["nodes"] == 2

    local: list[dict[str, float]] = []
    run_experiment(compose(OVERRIDES + ["runtime=local"]), log_dir=tmp_path, report=local.append, progress=False)
    for a, b in zip(local, remote["history"], strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_sweep_with_gpu_shares_schedules_on_one_gpu(tmp_path):
    """On a node with one (declared) GPU, client.num_gpus=auto gives each of a trial's five
    participants 1/8 of it; the trials fit and finish."""
    sweep = tmp_path / "gpu.yaml"
    sweep.write_text(
        "name: gpu\noverrides: [runtime=ray, rounds=2, server.epochs=1]\ngrid:\n  theta: [0.1, 1.0]\n"
    )
    script = Path(__file__).with_name("ray_cluster_run.py")
    done = subprocess.run(
        [sys.executable, str(script), "fake-gpu", str(sweep), str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(done.stdout.strip().splitlines()[-1])["results"].splitlines()
    assert len(table) == 3 and all(row.endswith(",done") for row in table[1:])
    params = sorted((tmp_path / "results" / "gpu").glob("*/params.json"))
    assert [json.loads(p.read_text())["client"]["num_gpus"] for p in params] == [0.125, 0.125]
