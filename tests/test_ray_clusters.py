"""Ray clusters of other shapes: two nodes (the numbers do not change), GPU shares, and the
local Ray that fedsweep starts (on loopback only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment
from tests.ray_processes import is_loopback

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

# two workers of 1 CPU on two 1-CPU nodes: one per node, each serving two of the four clients
OVERRIDES = ["rounds=2", "solver=steps", "solver.tolerance=null", "solver.epochs=1", "seed=5", "partition.clients_f=2",
             "partition.clients_g=2"]  # fmt: skip (the fixed-step solver: see test_runtimes.py)


def test_two_node_cluster_gives_the_local_numbers(tmp_path):
    script = Path(__file__).with_name("ray_cluster_run.py")
    done = subprocess.run(
        [sys.executable, str(script), "two-nodes", *OVERRIDES, "runtime=ray", "runtime.workers=2"],
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
    """On a node with one (declared) GPU, runtime.num_gpus=auto gives a trial's worker and its
    server 1/2 of the GPU each: a trial fits on the GPU, and the trials finish."""
    sweep = tmp_path / "gpu.yaml"
    sweep.write_text(
        "name: gpu\noverrides: [runtime=ray, runtime.workers=1, rounds=2]\ngrid:\n  method.theta: [0.1, 1.0]\n"
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
    runtimes = [json.loads(p.read_text())["runtime"] for p in params]
    assert [(r["workers"], r["num_gpus"]) for r in runtimes] == [(1, 0.5), (1, 0.5)]


def test_a_local_ray_listens_on_loopback_only():
    """The Ray a run or sweep starts (``init_ray``, dashboard on): every socket that its
    processes listen on (GCS, raylet, object manager, agents, dashboard, driver, an actor
    and a task worker) is bound to 127.0.0.1. With Ray's default port for the dashboard agent
    (52365) taken, as by another Ray of the machine, the agent serves on a free port instead;
    without trials printing to the driver there is no log monitor (the dashboard's autoscaler
    monitor runs, as the dashboard is on)."""
    script = Path(__file__).with_name("ray_cluster_run.py")
    done = subprocess.run([sys.executable, str(script), "local"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.loads(done.stdout.strip().splitlines()[-1])
    assert started["node"] == "127.0.0.1"
    listening = started["listening"]
    names = {name for _, name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::Dashboard") for n in names), names
    assert set(started["workers"]) <= {pid for pid, *_ in listening}  # the actor and the task worker were seen
    assert [s for s in listening if not is_loopback(s[2])] == []
    agents = {port for _, name, _, port in listening if name.startswith("ray::Dashboard")}
    assert started["agent_port"] != 52365 and started["agent_port"] in agents, (started["agent_port"], agents)
    assert "monitor.py" in started["services"] and "log_monitor.py" not in started["services"], started["services"]
    assert "dashboard.py" in started["services"]


def test_a_run_s_own_ray_without_the_dashboard_starts_only_what_runs_use():
    """No API server (Ray's dashboard.py), autoscaler monitor or log monitor; tasks run."""
    script = Path(__file__).with_name("ray_cluster_run.py")
    done = subprocess.run([sys.executable, str(script), "lean"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.loads(done.stdout.strip().splitlines()[-1])
    assert not {"dashboard.py", "monitor.py", "log_monitor.py"} & set(started["services"]), started["services"]
    assert {"gcs_server", "raylet"} <= set(started["services"]) and started["task_pid"] > 0
    assert started["dashboard_url"] in (None, "")
