"""Checkpoints are read safely, carry their config, and every bad one stops a run in one line."""

from __future__ import annotations

import os

import pytest

from fedsweep import run
from fedsweep.config import compose
from fedsweep.experiment import run_experiment

BASE = ["rounds=2", "server.epochs=1", "checkpoint.every=2", "seed=1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("made")
    run_experiment(compose(BASE), log_dir=log_dir, progress=False)
    return log_dir / "checkpoint" / "checkpoint.pt"


def resume(capsys, tmp_path, path, *overrides):
    log_dir = tmp_path / "resumed"
    status = run.main([*BASE, "rounds=3", f"checkpoint.resume={path}", f"log_dir={log_dir}", *overrides])
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
    [("method=fedavg", "method._target_"), ("model.hidden=32", "model.hidden"), ("partition=iid", "partition.scheme"),
     ("method.theta=0.7", "theta"), ("seed=2", "seed")],
)  # fmt: skip
def test_resuming_under_another_config_names_the_first_differing_key(tmp_path, capsys, checkpoint, override, key):
    status, err, log_dir = resume(capsys, tmp_path, checkpoint, override)
    assert status == 2 and f"{key}=" in err and str(checkpoint) in err and len(err.splitlines()) == 1
    assert not log_dir.exists()


def test_keys_that_do_not_change_the_numbers_may_change(tmp_path, capsys, checkpoint):
    status, err, _ = resume(capsys, tmp_path, checkpoint, "target_accuracy=0.5", "checkpoint.every=0")
    assert status == 0, err
