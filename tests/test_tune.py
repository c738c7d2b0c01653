"""End to end: a small Ray Tune sweep writes TensorBoard tags, a table, plots, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsweep.sweep.sweep_file import load_sweep
from fedsweep.sweep.driver import run_sweep

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

TAGS = {
    "accuracy/test",
    "accuracy/server",
    "loss/test",
    "loss/server",
    "norm/extragrad/full",
    "norm/extragrad/f",
    "norm/extragrad/g",
    "loss/argmin",
}

SWEEP = """\
name: e2e
overrides: [runtime=ray, rounds=3, checkpoint.every=1, checkpoint.keep=2]
grid:
  method.theta: [0.1, 1.0]
  method.q: [0.5]
"""


def test_sweep_end_to_end_and_resume(ray_session, tmp_path):
    path = tmp_path / "e2e.yaml"
    path.write_text(SWEEP)
    results = tmp_path / "results"
    out, table = run_sweep(load_sweep(path), results_dir=results)
    assert table["status"].tolist() == ["done", "done"]

    table = (out / "results.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("method.theta,method.q,accuracy/test")
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "accuracy_vs_comm.png").stat().st_size > 0
    assert out.stat().st_mode & 0o777 == 0o700  # private to its owner
    for trial in out.glob("*/params.json"):  # three checkpoints made, the newest two kept
        assert len(list(trial.parent.glob("checkpoint_*"))) == 2
    trial_dirs = sorted((out / "tensorboard").iterdir())
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert TAGS <= tags, TAGS - tags
        assert [e.step for e in acc.Scalars("accuracy/test")] == [1, 2, 3]

    # resume: finished trials are not redone
    before = {p: p.stat().st_mtime_ns for p in Path(out / "tensorboard").rglob("events.*")}
    run_sweep(load_sweep(path), results_dir=results)
    after = {p: p.stat().st_mtime_ns for p in Path(out / "tensorboard").rglob("events.*")}
    assert before == after


def test_a_value_the_data_refutes_stops_the_sweep_before_ray(tmp_path, monkeypatch, capsys):
    """The data, partition and model are built once on the driver (cheaply) before Ray starts."""
    import ray

    from fedsweep.cli import tune_main as main

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray must not start")))
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\noverrides: [runtime=ray, rounds=1]\ngrid:\n  partition.server_fraction: [0.0001]\n")
    assert main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: server_fraction=0.0001 gives an empty server part") and "\n" not in err


def test_two_trials_of_a_thousand_clients_each_share_two_cpus(ray_session, tmp_path):
    """Two trials at once on 2 CPUs, 1,000 virtual clients each, one worker each: placement
    groups that fit side by side, no deadlock."""
    path = tmp_path / "many.yaml"
    path.write_text(
        "name: many\n"
        "overrides: [runtime=ray, runtime.workers=1, rounds=1, partition=groups_iid,"
        " partition.clients_f=500, partition.clients_g=500]\n"
        "grid:\n  method.theta: [0.1, 1.0]\nmax_concurrent_trials: 2\n"
    )
    out, table = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
    assert table["status"].tolist() == ["done", "done"]
    params = [json.loads(p.read_text()) for p in sorted(out.glob("*/params.json"))]
    assert [p["runtime"]["workers"] for p in params] == [1, 1]
    results = [json.loads(line) for p in sorted(out.glob("*/result.json")) for line in p.read_text().splitlines()]
    assert all(r["comm/messages"] >= 1000 * r["round"] for r in results)  # every client, every full communication


def test_a_second_driver_of_the_same_sweep_stops_in_one_line(tmp_path, capsys):
    """While one driver holds the sweep's folder, another stops at once, naming it and the holder."""
    import fcntl
    import os

    from fedsweep.cli import tune_main as main
    from fedsweep.sweep.driver import LOCKFILE

    path = tmp_path / "e2e.yaml"
    path.write_text(SWEEP)
    folder = tmp_path / "results" / "e2e"
    folder.mkdir(parents=True)
    with open(folder / LOCKFILE, "w") as holder:
        holder.write(str(os.getpid()))
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder} is in use by another sweep driver (pid {os.getpid()}); wait for it or stop it"
    assert sorted(p.name for p in folder.iterdir()) == [LOCKFILE]  # nothing written


def test_a_sweep_never_writes_outside_its_results_folder(tmp_path, capsys):
    """A link planted under the sweep's name, pointing elsewhere, is refused before anything is written."""
    from fedsweep.cli import tune_main as main

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "e2e").symlink_to(outside)
    path = tmp_path / "e2e.yaml"
    path.write_text(SWEEP)
    assert main([str(path), "--results", str(tmp_path / "results")]) == 2
    assert "lies outside the results folder" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_a_sweep_does_not_resume_from_pickles_others_could_write(tmp_path, capsys):
    """Resuming unpickles Tune's tuner.pkl: a group- or world-writable one is refused, untouched."""
    from fedsweep.cli import tune_main as main

    folder = tmp_path / "results" / "e2e"
    folder.mkdir(parents=True)
    planted = folder / "tuner.pkl"
    planted.write_bytes(b"not read")
    planted.chmod(0o666)
    path = tmp_path / "e2e.yaml"
    path.write_text(SWEEP)
    assert main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{planted} is not private to you" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["tuner.pkl"]


def _scalar_runs(folder: Path) -> dict[Path, set[str]]:
    """Every TensorBoard run (a directory with event files) under ``folder`` and its scalar tags."""
    runs = {}
    for run in sorted({f.parent for f in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run))
        acc.Reload()
        runs[run] = set(acc.Tags()["scalars"])
    return runs


def test_the_default_sweep_makes_one_tensorboard_tree_with_hparams(ray_session, tmp_path):
    """The default sweep (shortened): TensorBoard finds every trial's hyperparameters and status
    in the trial's own run, and no trial shows a curve twice (Tune's own TensorBoard files are off)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    default = Path(__file__).resolve().parents[1] / "sweeps" / "vrcs_grid.yaml"
    sweep = load_sweep(default, overrides=["runtime=local", "rounds=1", "checkpoint.every=0"], name="tb")
    out, table = run_sweep(sweep, results_dir=tmp_path / "results")
    assert len(table) == 8 and (table["status"] == "done").all()

    runs = _scalar_runs(out)
    assert all(out / "tensorboard" in run.parents for run in runs)  # one tree: nothing in Tune's trial folders
    trial_dirs = sorted((out / "tensorboard").iterdir())
    assert len(trial_dirs) == 8
    seen = set()
    for trial_dir in trial_dirs:
        tags = [tag for run, run_tags in runs.items() if trial_dir in (run, *run.parents) for tag in run_tags]
        assert len(tags) == len(set(tags)), trial_dir  # no scalar tag in two runs of one trial
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        values = {k: v.number_value for k, v in start.session_start_info.hparams.items()}
        assert set(values) == {"method.theta", "method.p", "method.q"} and trial_dir.name.endswith(
            f"theta={values['method.theta']:.4g},p={values['method.p']:.4g},q={values['method.q']:.4g}"
        )
        assert end.session_end_info.status == api_pb2.STATUS_SUCCESS
        metrics = {m.name.tag for m in experiment.metric_infos}
        assert "accuracy/test" in metrics and metrics <= set(acc.Tags()["scalars"])  # read from the run's curves
        seen.add(tuple(sorted(values.items())))
    assert len(seen) == 8


def test_asha_stops_a_trailing_trial_early_and_the_sweep_is_finished(ray_session, tmp_path):
    """Trials one at a time: θ = 0.002 trails θ = 0.5 at the grace round, so ASHA stops it there;
    the table says so, and the sweep counts it as ended (nothing to resume)."""
    path = tmp_path / "asha.yaml"
    path.write_text("name: asha\noverrides: [runtime=local, rounds=4]\ngrid:\n  method.theta: [0.5, 0.002]\n"
                    "scheduler: {name: asha, grace_period: 1, reduction_factor: 2}\nmax_concurrent_trials: 1\n")  # fmt: skip
    out, table = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
    assert table["method.theta"].tolist() == [0.5, 0.002]
    assert table["status"].tolist() == ["done", "stopped early at 1"]
    assert table["round"].tolist() == [4, 1]
    assert table.attrs["unfinished"] == 0


def test_optuna_and_random_searches_run_their_budget(ray_session, tmp_path):
    """num_samples trials, each with values from the sampled ranges and the choices."""
    for search in ("optuna", "random"):
        path = tmp_path / f"{search}.yaml"
        path.write_text(
            f"name: {search}\noverrides: [runtime=local, rounds=2]\n"
            "grid:\n  method.theta: {loguniform: [0.05, 1.0]}\n  method.q: [0.3, 0.6]\n"
            f"search: {search}\nnum_samples: 3\nscheduler: asha\nmax_concurrent_trials: 2\n"
        )
        out, table = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
        assert len(table) == 3 and table.attrs["unfinished"] == 0, table
        assert table["method.theta"].between(0.05, 1.0).all() and table["method.theta"].nunique() == 3
        assert set(table["method.q"]) <= {0.3, 0.6}
        assert all(s == "done" or s.startswith("stopped early at") for s in table["status"])
        assert len(list((out / "tensorboard").iterdir())) == 3
        # run again: the searcher's state is restored with the sweep, so no trial is added or redone
        events = {p: p.stat().st_mtime_ns for p in (out / "tensorboard").rglob("events.*")}
        _, again = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
        columns = ["method.theta", "method.q", "status"]
        def rows(t):
            return t[columns].sort_values("method.theta").reset_index(drop=True)

        assert rows(again).equals(rows(table))
        assert {p: p.stat().st_mtime_ns for p in (out / "tensorboard").rglob("events.*")} == events


def test_rank_best_ranks_each_trial_by_its_best_round(ray_session, tmp_path):
    """A trial that diverged at round 1 is listed last, unranked, and counts as ended; rank: best
    takes each trial's best round from Tune's table (get_dataframe with a filter), the diverged
    trial (no finite metric) still listed."""
    from dataclasses import replace

    from ray.tune import ExperimentAnalysis, ResultGrid

    from fedsweep.sweep.report import write_report

    path = tmp_path / "rank.yaml"
    path.write_text("name: rank\noverrides: [runtime=local, rounds=4, solver=steps, solver.tolerance=null]\n"
                    "grid:\n  method.theta: [0.01, 0.5, 2.0]\nmetric: loss/test\nmode: min\n")  # fmt: skip
    out, last = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
    # a diverged trial is listed, last whatever it reached, and has ended: nothing to resume
    assert last.attrs["unfinished"] == 0 and last["status"].tolist()[-1] == "diverged at 1"
    assert last["method.theta"].tolist()[-1] == 0.01 and not last["status"].tolist()[:-1].count("diverged at 1")
    results = ResultGrid(ExperimentAnalysis(str(out)))
    best = write_report(results, replace(load_sweep(path), rank="best"), tmp_path)
    assert best["status"].tolist()[-1] == "diverged at 1"
    for result in results:
        history = result.metrics_dataframe
        theta = result.config["method"]["theta"]
        if theta == 0.01:
            continue
        row = best[best["method.theta"] == theta].iloc[0]
        lowest = history.loc[history["loss/test"].idxmin()]
        assert row["loss/test"] == lowest["loss/test"] and row["round"] == lowest["round"]
        assert last[last["method.theta"] == theta].iloc[0]["round"] == 4
    ranked = best[~best["status"].str.startswith("diverged")]
    assert ranked["loss/test"].is_monotonic_increasing


def test_trial_output_reaches_the_terminal_behind_the_trial_name(tmp_path):
    """A trial's prints (the θ ≈ 1/δ hint, the divergence line) reach the sweep's terminal, each
    line behind the trial's short name, without Ray's (name pid=…) prefix. A value only the
    trial's node can refute (a CUDA device on a machine without one: the driver may lack the
    GPUs a cluster's nodes have) fails its trial, not the sweep's start: in one line, once (the
    same on every retry, so Tune does not retry it), and the sweep exits with status 1."""
    import os
    import re
    import subprocess
    import sys
    import tempfile

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    path = tmp_path / "out.yaml"
    path.write_text("name: out\noverrides: [runtime=local, rounds=3, solver=steps, solver.tolerance=null, similarity.estimate=true,"
                    " similarity.iterations=2]\ngrid:\n  method.theta: [0.5, 0.01]\n  device: [cpu, cuda]\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fs-", dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        done = subprocess.run(
            [sys.executable, "-m", "fedsweep.tune", str(path), "--results", str(tmp_path / "results"), "--no-dashboard"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_TMPDIR": ray_tmp},
        )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(re.fullmatch(r"\[#\d theta=0\.5,device=cpu\] similarity at x0 \(exact Hessians\): delta_f = .*\(method\.theta=0\.5\), p ~ .*", line) for line in lines), lines
    assert any(re.fullmatch(r"\[#\d theta=0\.01,device=cpu\] diverged at round 1: .*", line) for line in lines), lines
    assert re.search(r"\[#\d theta=0\.5,device=cpu\] done at round 3: accuracy/test=", done.stdout)
    reason = "device=cuda but torch finds no CUDA device here"
    for theta in ("0.5", "0.01"):
        assert len(re.findall(rf"\[#\d theta={theta},device=cuda\] error: {reason}", done.stdout)) == 1, lines
    assert done.stderr.splitlines()[-1] == f"error: 2 trial(s) failed: {reason}; use device=cpu or device=auto"
    assert "Traceback" not in done.stderr and "pid=" not in done.stdout + done.stderr
    assert "Ray dashboard:" not in done.stdout  # --no-dashboard
    table = (tmp_path / "results" / "out" / "results.csv").read_text()
    assert table.count(",error") == 2 and not list((tmp_path / "results" / "out").rglob("error.txt"))  # results, not crashes
