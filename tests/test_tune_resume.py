"""A sweep stopped mid-trial (Ctrl-C) resumes that trial from its last checkpoint, with identical numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment
from fedsweep.experiment.metrics import HPARAMS_SUFFIX
from fedsweep.sweep.sweep_file import load_sweep
from fedsweep.sweep.driver import run_sweep
import pytest

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

ROUNDS = 12
SWEEP = f"""\
name: stop
overrides: [runtime=ray, rounds={ROUNDS}, checkpoint.every=2]
grid:
  method.theta: [0.5]
"""


def test_stopped_sweep_resumes_mid_trial(ray_session, tmp_path):
    """SIGTERM (a scheduler's or the system's stop; fedsweep turns it into Ctrl-C's SIGINT, Tune's
    graceful stop) mid-trial: exit 130, the resume command said, no process of the sweep's Ray
    left; the same command resumes the trial from its checkpoint to the undisturbed numbers."""
    from tests.ray_processes import processes_left_under

    path = tmp_path / "stop.yaml"
    path.write_text(SWEEP)
    results = tmp_path / "results"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))  # short (Ray's socket paths); in its processes' command lines
    driver = subprocess.Popen(
        [sys.executable, "-m", "fedsweep.tune", str(path), "--results", str(results), "--no-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    deadline = time.time() + 180
    while len(list(results.glob("stop/*/checkpoint_*"))) < 2 and time.time() < deadline:
        assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=180)[0].decode()
    assert driver.returncode == 130, output[-2000:]  # stopped, not done: the shell sees it
    assert "1 of 1 trial(s) not finished: run the same command again" in output, output[-2000:]
    assert f"resume with: {sys.executable} -m fedsweep.tune {path} --results {results}" in output
    assert not processes_left_under(ray_tmp), "the sweep's Ray processes outlived it"
    stopped = pd.read_csv(results / "stop" / "results.csv")
    assert stopped["status"][0].startswith("unfinished at")

    run_sweep(load_sweep(path), results_dir=results)

    table = pd.read_csv(results / "stop" / "results.csv")
    assert table["status"].tolist() == ["done"]
    (trial_dir,) = (results / "stop" / "tensorboard").iterdir()
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy/test")] == list(range(1, ROUNDS + 1))
    # the resumed attempt wrote its own event file, starting after a checkpointed round
    scalars = [f for f in trial_dir.glob("events.out.tfevents.*") if not f.name.endswith(HPARAMS_SUFFIX)]
    first, resumed = sorted(scalars, key=lambda f: f.stat().st_mtime)
    resumed_events = EventAccumulator(str(resumed))
    resumed_events.Reload()
    resumed_steps = [e.step for e in resumed_events.Scalars("accuracy/test")]
    assert resumed_steps[0] > 2 and resumed_steps[0] % 2 == 1 and resumed_steps[-1] == ROUNDS

    # the uninterrupted run: the same pool (the trial's resolved worker count, and whether its own
    # process served a share), from the start
    (params,) = (results / "stop").glob("*/params.json")
    pool = json.loads(params.read_text())["runtime"]
    serves = str(pool["driver_serves"]).lower()
    straight = []
    run_experiment(
        compose([f"rounds={ROUNDS}", "method.theta=0.5", "runtime=ray", f"runtime.workers={pool['workers']}",
                 f"runtime.driver_serves={serves}"]),  # fmt: skip
        log_dir=tmp_path / "straight",
        report=straight.append,
        progress=False,
    )
    assert table["accuracy/test"][0] == straight[-1]["accuracy/test"]
    assert table["loss/test"][0] == straight[-1]["loss/test"]
