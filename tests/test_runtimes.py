"""The in-process and Ray runtimes give the same numbers for the same seed."""

from __future__ import annotations

import pytest

from fedsweep.config import compose
from fedsweep.experiment import run_experiment

SHORT = ["rounds=3", "server.epochs=2", "q=0.5", "seed=7"]


def history(cfg_overrides, tmp_path, name):
    rounds = []
    run_experiment(compose(cfg_overrides), log_dir=tmp_path / name, report=rounds.append, progress=False)
    return rounds


@pytest.mark.parametrize(
    "extra",
    [["method=vrcs", "similarity.estimate=true", "similarity.iterations=3"], ["method=fedavg"]],
    ids=["vrcs+similarity", "fedavg"],
)
def test_local_and_ray_runtimes_agree(ray_session, tmp_path, extra):
    local = history(SHORT + extra + ["runtime=local"], tmp_path, "local")
    remote = history(SHORT + extra + ["runtime=ray", "client.num_cpus=0.5"], tmp_path, "ray")
    assert len(local) == len(remote) == 3
    for a, b in zip(local, remote):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_minibatch_runs_agree_too(ray_session, tmp_path):
    mb = SHORT + ["client.batch_size=16", "server.grad_batch_size=16", "rounds=2"]
    local = history(mb + ["runtime=local"], tmp_path, "local")
    remote = history(mb + ["runtime=ray", "client.num_cpus=0.5"], tmp_path, "ray")
    for a, b in zip(local, remote):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_same_seed_same_run_different_seed_different_run(tmp_path):
    a = history(SHORT, tmp_path, "a")
    b = history(SHORT, tmp_path, "b")
    c = history(SHORT[:-1] + ["seed=8"], tmp_path, "c")
    assert str(a) == str(b)  # identical, nan included
    assert a[-1]["loss/test"] != c[-1]["loss/test"]


def test_training_improves_the_model(tmp_path):
    rounds = history(["rounds=8", "theta=0.5", "seed=0"], tmp_path, "learn")
    assert rounds[-1]["accuracy/test"] > 0.85
    assert rounds[-1]["loss/test"] < rounds[0]["loss/test"]
    assert rounds[-1]["comm/f"] >= 8 and rounds[-1]["comm/g"] >= 8  # one full communication per round
