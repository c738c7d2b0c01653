"""A sweep survives the loss of a node: on a real two-node Ray cluster (two ``ray start``
processes on this machine, each with its own temp folder, CPU and memory limits), the
worker node's raylet is SIGKILLed mid-sweep once a trial on it has checkpointed. Ray
Tune's FailureConfig starts that trial again on the head from its last checkpoint, every
trial finishes, and the numbers are those of undisturbed runs."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsweep.experiment.loop import run_experiment
from tests.ray_processes import descendants, free_port, is_descendant, name, stop, with_in_command_line
import pytest

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

ROUNDS, EVERY = 60, 2  # ~0.1 s a round: the kill lands long before the lost trial could finish
SWEEP = f"""\
name: nodes
overrides: [runtime=local, rounds={ROUNDS}, checkpoint.every={EVERY}, solver=steps, solver.tolerance=null, solver.epochs=1,
            target_accuracy=null]
grid:
  method.theta: [0.3, 0.5]
"""
NODE = ["--num-cpus=1", f"--memory={2 * 1024**3}", f"--object-store-memory={200 * 1024**2}", "--disable-usage-stats"]
FAST_HEALTH_CHECK = {  # the head's GCS declares a silent node dead within ~2 s (Ray's default: ~30 s)
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def wait_for(condition, what: str, *, alive: subprocess.Popen, log: Path, timeout: float = 120.0):
    """``condition()`` once true; fails with ``log`` if the process ``alive`` ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        if alive.poll() is not None:
            raise AssertionError(f"waiting for {what}, {alive.args[:3]} ended:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def process_named(parent: int, wanted: str) -> int | None:
    return next((pid for pid in descendants(parent) if name(pid) == wanted), None)


def checkpointed_trial_under(exp_dir: Path, raylet: int) -> Path | None:
    """The folder of a trial that has a checkpoint and whose process runs under ``raylet``."""
    for result in exp_dir.glob("*/result.json"):
        lines = result.read_text().splitlines()
        if lines and any(result.parent.glob("checkpoint_*")) and is_descendant(json.loads(lines[-1])["pid"], raylet):
            return result.parent
    return None


def undisturbed(config: dict, log_dir: Path) -> dict[str, float]:
    """A trial's run, as its trial runs it (one torch thread) but without Tune or Ray."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment(config, log_dir=log_dir, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_a_sweep_survives_the_loss_of_a_worker_node(tmp_path):
    sweep_file, results = tmp_path / "nodes.yaml", tmp_path / "results"
    sweep_file.write_text(SWEEP)
    exp_dir = results / "nodes"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedsweep-nodes-"))  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    # token authentication on, with a token of this test's own: the nodes listen on the machine's address
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    started: list[subprocess.Popen] = []

    def launch(args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``args`` in a session of its own, its output to ``log`` (a file: a pipe could fill up)."""
        with open(log, "w") as out:
            process = subprocess.Popen(args, env={**env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        started.append(process)
        return process

    def node(args: list[str], label: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """A ``ray start --block`` node, returned once it has joined the cluster."""
        log = ray_tmp / f"{label}.log"
        process = launch([ray_cli, "start", f"--temp-dir={ray_tmp / label}", *NODE, *args, "--block"], log, extra_env)
        wait_for(lambda: "Ray runtime started" in log.read_text(), f"the {label} node", alive=process, log=log)
        return process

    configs: dict[str, dict] = {}
    expected: dict[str, dict[str, float]] = {}

    def run_undisturbed() -> None:
        """Each trial's config (those not run yet) run without Tune or Ray."""
        for params in exp_dir.glob("*/params.json"):
            trial = params.parent.name
            if trial not in expected:
                try:
                    configs[trial] = json.loads(params.read_text())
                except ValueError:  # Tune is writing it this moment: the next call reads it
                    continue
                expected[trial] = undisturbed(configs[trial], tmp_path / "undisturbed" / trial)

    try:
        node(["--head", f"--port={port}", "--include-dashboard=false"], "head", FAST_HEALTH_CHECK)
        worker = node([f"--address={address}"], "worker")
        raylet = process_named(worker.pid, "raylet")
        assert raylet is not None
        driver_log = ray_tmp / "driver.log"
        driver = launch([sys.executable, "-m", "fedsweep.tune", str(sweep_file), "--results", str(results),
                         "--address", address], driver_log, {"RAY_TMPDIR": str(ray_tmp / "driver")})  # fmt: skip
        victim = wait_for(lambda: checkpointed_trial_under(exp_dir, raylet), "a checkpoint of a trial on the worker node",
                          alive=driver, log=driver_log)  # fmt: skip
        os.kill(raylet, signal.SIGKILL)
        run_undisturbed()  # meanwhile: the surviving node has one CPU
        driver.wait(timeout=300)
        output = driver_log.read_text()
        assert driver.returncode == 0, output[-3000:]
        run_undisturbed()
    finally:
        pids = {p.pid for p in started} | {d for p in started for d in descendants(p.pid)}
        stop(pids | with_in_command_line(str(ray_tmp)))  # the killed raylet's orphans too
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert re.search(r"Restored on \S+ from checkpoint", output), output[-3000:]  # Tune retried the lost trial
    table = pd.read_csv(exp_dir / "results.csv")
    assert table["status"].tolist() == ["done", "done"]
    # the lost trial started again from one of its checkpoints, not from round 1
    curves = []  # the trial's event files with curves (the HParams record is a file of its own)
    for path in sorted((exp_dir / "tensorboard" / victim.name).glob("events.*"), key=lambda f: f.stat().st_mtime):
        events = EventAccumulator(str(path))
        events.Reload()
        if "accuracy/test" in events.Tags()["scalars"]:
            curves.append([e.step for e in events.Scalars("accuracy/test")])
    first, steps = curves
    assert steps[0] > 1 and (steps[0] - 1) % EVERY == 0 and steps[-1] == ROUNDS
    # and every trial ends with the numbers of its undisturbed run
    assert len(expected) == 2
    for trial, final in expected.items():
        row = table[table["method.theta"] == configs[trial]["method"]["theta"]].iloc[0]
        assert (row["accuracy/test"], row["loss/test"]) == (final["accuracy/test"], final["loss/test"]), trial
