"""Checkpoints are read safely, carry their config, and every bad one stops a run in one line."""

from __future__ import annotations

import os

import pytest

from fedsweep.cli import run_main
from fedsweep.experiment.checkpoint import checkpoint_path, saved_rounds
from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment

BASE = ["rounds=2", "checkpoint.every=2", "seed=1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("made")
    run_experiment(compose(BASE), log_dir=log_dir, progress=False)
    return checkpoint_path(log_dir, 2)


def resume(capsys, tmp_path, path, *overrides):
    log_dir = tmp_path / "resumed"
    status = run_main([*BASE, "rounds=3", f"checkpoint.resume={path}", f"log_dir={log_dir}", *overrides])
    err = capsys.readouterr().err.strip()
    return status, err, log_dir


class Payload:
    """Unpickling this runs a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(tmp_path, capsys):
    import torch

    marker, planted = tmp_path / "pwned", tmp_path / "planted.pt"
    torch.save({"format": 2, "x": Payload(marker)}, planted)
    status, err, log_dir = resume(capsys, tmp_path, planted)
    assert status == 2 and not marker.exists()
    assert err.startswith("error: ") and str(planted) in err and len(err.splitlines()) == 1
    assert not log_dir.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_stops_in_one_line_naming_the_file(tmp_path, capsys, checkpoint, damage):
    path = tmp_path / "damaged.pt"
    data = checkpoint.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 40}[damage])
    status, err, log_dir = resume(capsys, tmp_path, path)
    assert status == 2 and str(path) in err and len(err.splitlines()) == 1
    assert not log_dir.exists()


@pytest.mark.parametrize(
    "override, key",
    [("method=fedavg", "method._target_"), ("model.hidden=32", "model.hidden"), ("partition=groups_iid", "partition.scheme"),
     ("method.theta=0.7", "theta"), ("seed=2", "seed")],
)  # fmt: skip
def test_resuming_under_another_config_names_the_first_differing_key(tmp_path, capsys, checkpoint, override, key):
    status, err, log_dir = resume(capsys, tmp_path, checkpoint, override)
    assert status == 2 and f"{key}=" in err and str(checkpoint) in err and len(err.splitlines()) == 1
    assert not log_dir.exists()


def test_keys_that_do_not_change_the_numbers_may_change(tmp_path, capsys, checkpoint):
    status, err, _ = resume(capsys, tmp_path, checkpoint, "target_accuracy=0.5", "checkpoint.every=0")
    assert status == 0, err


def test_a_run_keeps_its_newest_checkpoints_and_resumes_from_the_newest(tmp_path, capsys):
    log_dir = tmp_path / "run"
    assert run_main([*BASE, "rounds=5", "checkpoint.every=1", f"log_dir={log_dir}"]) == 0
    assert saved_rounds(log_dir) == [4, 5]  # checkpoint.keep: 2 by default
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir()) == ["round_000004", "round_000005"]
    newest = checkpoint_path(log_dir, 5)
    assert f"checkpoint.resume={newest}" in capsys.readouterr().out

    resumed: list[dict[str, float]] = []
    run_experiment(compose([*BASE, "rounds=6", f"checkpoint.resume={newest}"]), log_dir=tmp_path / "resumed",
                   report=resumed.append, progress=False)  # fmt: skip
    straight: list[dict[str, float]] = []
    run_experiment(compose([*BASE, "rounds=6"]), log_dir=tmp_path / "straight", report=straight.append, progress=False)
    assert [m["round"] for m in resumed] == [6.0]
    assert resumed[-1] == pytest.approx(straight[-1], rel=0, abs=0, nan_ok=True)


def test_checkpoint_keep_bounds_a_run_and_a_rerun_drops_the_rounds_it_replaces(tmp_path):
    log_dir = tmp_path / "run"
    assert run_main([*BASE, "rounds=6", "checkpoint.every=1", "checkpoint.keep=3", f"log_dir={log_dir}"]) == 0
    assert saved_rounds(log_dir) == [4, 5, 6]
    # rerun from round 4 into the same folder: its round 5 replaces the old one, the old 6 goes
    again = [*BASE, "rounds=5", "checkpoint.every=1", "checkpoint.keep=3", f"log_dir={log_dir}"]
    assert run_main([*again, f"checkpoint.resume={checkpoint_path(log_dir, 4)}"]) == 0
    assert saved_rounds(log_dir) == [4, 5]
