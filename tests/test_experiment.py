"""A whole run in-process: checkpoint-restart, communication curves, target accuracy, every method."""

from __future__ import annotations

import math
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsweep.experiment.checkpoint import checkpoint_path
from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment

BASE = ["rounds=4", "seed=3", "client.batch_size=32", "server.grad_batch_size=16"]


def scalars(log_dir, tag):
    """(step, value) pairs of ``tag`` in the TensorBoard run at ``log_dir``."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def run(overrides, log_dir):
    history = []
    run_experiment(compose(overrides), log_dir=log_dir, report=history.append, progress=False)
    return history


def test_checkpoint_restart_gives_identical_metrics(tmp_path):
    straight = run(BASE, tmp_path / "straight")
    first = run(BASE + ["rounds=2", "checkpoint.every=2"], tmp_path / "first")
    # TensorBoard orders event files by name, i.e. by the second they were opened; a real
    # resume starts later than the run it continues, so let this one too
    time.sleep(1.1)
    resumed = run(BASE + [f"checkpoint.resume={checkpoint_path(tmp_path / 'first', 2)}"], tmp_path / "first")
    assert [m["round"] for m in resumed] == [3.0, 4.0]
    assert str(first + resumed) == str(straight)  # bit-identical, nan included
    # the curves of the interrupted-and-resumed run are those of the straight one, per round
    # and per communication (each counter purged at its own checkpointed value)
    assert [s for s, _ in scalars(tmp_path / "first", "accuracy/test")] == [1, 2, 3, 4]
    for axis in ("f", "g", "total"):
        sub, tag = f"vs_comm_{axis}", f"accuracy/test/vs_comm_{axis}"
        assert scalars(tmp_path / "first" / sub, tag) == scalars(tmp_path / "straight" / sub, tag)


def test_a_method_carrying_state_resumes_with_it(tmp_path):
    """SCAFFOLD's control variates (one per client) travel with the checkpoint."""
    base = BASE + ["method=scaffold", "method.participation=0.5", "partition.clients_f=6"]
    straight = run(base, tmp_path / "straight")
    first = run(base + ["rounds=2", "checkpoint.every=2"], tmp_path / "first")
    resumed = run(base + [f"checkpoint.resume={checkpoint_path(tmp_path / 'first', 2)}"], tmp_path / "first")
    assert str(first + resumed) == str(straight)


def test_curves_against_communication_and_target(tmp_path):
    history = run(["rounds=6", "method.theta=0.5", "target_accuracy=0.5"], tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert {"comm/f", "comm/g", "comm/bytes_sent", "comm/bytes_received"} <= set(acc.Tags()["scalars"])
    for axis in ("f", "g", "total"):
        by_comm = scalars(tmp_path / "run" / f"vs_comm_{axis}", f"accuracy/test/vs_comm_{axis}")
        assert by_comm == [(int(m[f"comm/{axis}"]), pytest.approx(m["accuracy/test"])) for m in history]
        assert scalars(tmp_path / "run" / f"vs_comm_{axis}", f"loss/test/vs_comm_{axis}")
    reached = next(m for m in history if m["accuracy/test"] >= 0.5)
    last = history[-1]
    assert last["target/round"] == reached["round"]
    assert (last["target/comm_f"], last["target/comm_g"]) == (reached["comm/f"], reached["comm/g"])


def test_unreached_target_is_nan(tmp_path):
    last = run(["rounds=1", "target_accuracy=1.0"], tmp_path / "run")[-1]
    assert math.isnan(last["target/comm_f"])


@pytest.mark.parametrize("method", ["vrcs", "sliding", "fedavg", "fedprox", "scaffold", "server_only"])
def test_every_method_learns_digits(tmp_path, method):
    extra = {"vrcs": ["method.theta=0.5", "method.q=0.5"], "sliding": ["method.theta=0.5"], "server_only": ["method.theta=0.5"]}
    history = run([f"method={method}", "rounds=5", *extra.get(method, [])], tmp_path / method)
    assert history[-1]["loss/test"] < history[0]["loss/test"]
    assert history[-1]["accuracy/test"] > 0.3  # chance is 0.1
    comm = history[-1]["comm/f"] + history[-1]["comm/g"]
    assert (comm == 0) == (method == "server_only")


def test_a_rerun_into_the_same_directory_replaces_its_curves(tmp_path):
    run(["rounds=2"], tmp_path / "run")
    run(["rounds=2"], tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy/test")] == [1, 2]


def test_every_reported_metric_is_known_to_sweep_files(tmp_path):
    """A sweep's metric is checked by ``is_reported``: every method's report must pass it."""
    from fedsweep.experiment.metrics import is_reported

    seen = set()
    from fedsweep.experiment.config import CONFIG_DIR

    for method in sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")):
        overrides = [f"method={method}", "rounds=1", "similarity.estimate=true",
                     "similarity.iterations=1"] + (["method.q=0.2"] if method == "vrcs" else [])  # fmt: skip
        seen |= set(run(overrides, tmp_path / method)[-1])
    assert all(is_reported(m) for m in seen), [m for m in seen if not is_reported(m)]
    assert {"accuracy/test", "comm/messages", "clients/f", "clients/local", "target/round"} <= seen


def test_data_init_and_method_seeds_can_be_set_apart(tmp_path):
    """seeds.<source> overrides seed for one source alone: the others keep seed's draws."""
    import torch

    from fedsweep.experiment.config import to_container
    from fedsweep.experiment.build import prepare, seed_of

    base = to_container(compose(["seed=3"]))
    apart = to_container(compose(["seed=3", "seeds.init=9"]))
    assert [seed_of(apart, s) for s in ("data", "init", "method")] == [3, 9, 3]
    a, b = prepare(base), prepare(apart)
    assert torch.equal(a.partition.server["f"].y, b.partition.server["f"].y)  # the same data and partition
    wa, wb = a.model_fn().state_dict(), b.model_fn().state_dict()
    assert not torch.equal(next(iter(wa.values())), next(iter(wb.values())))  # another initialisation
    c = prepare(to_container(compose(["seed=3", "seeds.data=4"])))
    assert not torch.equal(a.partition.server["f"].y, c.partition.server["f"].y)
    assert torch.equal(next(iter(c.model_fn().state_dict().values())), next(iter(wa.values())))
    m1 = run(["rounds=2", "seed=3"], tmp_path / "a")
    m2 = run(["rounds=2", "seed=3", "seeds.method=5"], tmp_path / "b")
    assert [m["local_steps"] for m in m1] != [m["local_steps"] for m in m2]  # the method's own draws moved


def test_a_prepared_run_holds_its_training_set_once_in_its_partition():
    """``prepare`` lets the loaded training set go once partitioned (the clients' copy is what a
    pool puts in Ray's object store): two examples stay for the checks, in storage of their own."""
    from fedsweep.experiment.build import load_data, prepare
    from fedsweep.experiment.config import to_container

    cfg = to_container(compose(["partition=iid", "partition.clients=5"]))
    setup = prepare(cfg)
    kept = setup.bundle.train
    assert len(kept) == 2 and kept.x.untyped_storage().nbytes() == kept.x.nbytes
    shards = [d for clients in setup.partition.clients.values() for d in clients]
    assert sum(len(d) for d in shards) + sum(len(d) for d in setup.partition.server.values()) == len(load_data(cfg).train)


def test_one_population_of_a_thousand_clients_with_fifty_sampled_and_no_server_data(tmp_path):
    """Standard FL: one population, example-weighted, 50 of 1,000 clients drawn each round from all of
    them, no server data (so no server metrics), a contact and 50 messages a round."""
    from tests.helpers import history

    rounds = history(["partition=iid", "partition.clients=1000", "method=fedavg", "method.participation=50",
                      "method.batch_size=8", "rounds=3", "target_accuracy=null"], tmp_path)  # fmt: skip
    assert [m["clients/clients"] for m in rounds] == [50.0, 50.0, 50.0]
    assert [m["comm/clients"] for m in rounds] == [1.0, 2.0, 3.0]
    assert rounds[-1]["comm/messages"] == 150
    assert "loss/server" not in rounds[-1] and all(math.isfinite(m["loss/test"]) for m in rounds)
