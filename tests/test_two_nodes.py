"""The Ray runtime on two nodes: clients that cannot fit on one node spread out, and the numbers do not change."""

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
    script = Path(__file__).with_name("two_node_run.py")
    done = subprocess.run(
        [sys.executable, str(script), *OVERRIDES, "runtime=ray"],
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
