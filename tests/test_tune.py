"""End to end: a small Ray Tune sweep writes TensorBoard tags, a table, plots, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsweep.sweep import load_sweep
from fedsweep.tune import run_sweep

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
overrides: [runtime=ray, rounds=3, server.epochs=1, checkpoint.every=1, checkpoint.keep=2]
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


def test_a_failing_trial_makes_the_sweep_exit_non_zero(ray_session, tmp_path, capsys):
    """A value only the trial's node can refute (a CUDA device on a machine without one: the
    driver may lack the GPUs a cluster's nodes have) fails its trial, not the sweep's start."""
    from fedsweep.tune import main

    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\noverrides: [runtime=ray, rounds=1, device=cuda]\ngrid:\n  method.theta: [0.5]\n")
    assert main([str(path), "--results", str(tmp_path / "results")]) == 1
    assert "1 trial(s) failed" in capsys.readouterr().err
    assert "error" in (tmp_path / "results" / "bad" / "results.csv").read_text()


def test_a_value_the_data_refutes_stops_the_sweep_before_ray(tmp_path, monkeypatch, capsys):
    """The data, partition and model are built once on the driver (cheaply) before Ray starts."""
    import ray

    from fedsweep.tune import main

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
        "overrides: [runtime=ray, runtime.workers=1, rounds=2, server.epochs=1, partition=iid,"
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

    from fedsweep.tune import LOCKFILE, main

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
    from fedsweep.tune import main

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
    from fedsweep.tune import main

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


def test_a_diverged_trial_is_listed_not_ranked(ray_session, tmp_path):
    path = tmp_path / "div.yaml"
    path.write_text("name: div\noverrides: [rounds=2, server.solver=optimizer]\ngrid:\n  method.theta: [0.01, 0.5]\n")
    _, table = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
    assert table["method.theta"].tolist() == [0.5, 0.01]  # the finished trial first
    assert table["status"].tolist() == ["done", "diverged at 1"]
    assert table.attrs["unfinished"] == 0  # a diverged trial has ended: nothing to resume


def test_repeats_give_a_summary_over_seeds(ray_session, tmp_path):
    import pandas as pd

    path = tmp_path / "seeds.yaml"
    path.write_text("name: seeds\noverrides: [runtime=local, rounds=1, server.epochs=1]\n"
                    "grid:\n  method.theta: [0.5]\nrepeats: 2\n")  # fmt: skip
    out, table = run_sweep(load_sweep(path), results_dir=tmp_path / "results")
    assert sorted(table["seed"]) == [0, 1] and (table["status"] == "done").all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["seeds"].tolist() == [2] and summary["finished"].tolist() == [2]
    assert summary["accuracy/test mean"][0] == pytest.approx(table["accuracy/test"].mean())
    assert (out / "accuracy.png").stat().st_size > 0
