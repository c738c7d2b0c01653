"""The in-process runtime and the Ray worker pool give the same numbers for the same seed,
for every method, any number of workers and any number of clients."""

from __future__ import annotations

import functools

import pytest

from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment

# The fixed-step solver: an adaptive stop (solver=lbfgs) turns the runtimes' 1e-7
# differences into different step counts, so the comparison would test the solver, not the runtime.
SHORT = ["rounds=2", "solver=steps", "solver.tolerance=null", "solver.epochs=2", "seed=7", "partition=groups_iid"]
METHODS = {  # every method, and every request path: HVPs, minibatches, sampled clients, participation
    "vrcs": ["method=vrcs", "method.q=0.5", "similarity.estimate=true", "similarity.iterations=2"],
    "vrcs-minibatch-sampled": [
        "method=vrcs", "method.q=0.3", "client.batch_size=8", "server.grad_batch_size=16", "method.local_participation=0.5",
    ],
    "sliding": ["method=sliding"],
    "fedavg-participation": ["method=fedavg", "method.participation=0.5", "method.local_epochs=2"],
    "fedprox": ["method=fedprox", "method.mu=0.5", "method.local_epochs=2"],
    "scaffold-participation": ["method=scaffold", "method.participation=0.5", "method.local_epochs=2", "rounds=3"],
    "server_only": ["method=server_only"],
    "feddyn-participation": ["method=feddyn", "method.participation=0.5", "method.alpha=0.1"],  # a number per client as a row
    "fednova-momentum": ["method=fednova", "method.momentum=0.5", "method.batch_size=7"],  # a number per client in the reply
    "fedadam-participation": ["method=fedadam", "method.participation=0.5"],
}  # fmt: skip


def history(overrides, log_dir, **kwargs):
    rounds = []
    run_experiment(compose(overrides), log_dir=log_dir, report=rounds.append, progress=False, **kwargs)
    return rounds


@functools.cache
def in_process(clients: int) -> dict[str, list[dict[str, float]]]:
    import tempfile

    tmp = tempfile.mkdtemp(prefix="fedsweep-local-")
    split = [f"partition.clients_f={clients // 2}", f"partition.clients_g={clients - clients // 2}"]
    return {name: history(SHORT + split + extra + ["runtime=local"], f"{tmp}/{name}") for name, extra in METHODS.items()}


def assert_same_numbers(a, b, rel=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-7, nan_ok=True), key


@pytest.mark.slow
@pytest.mark.parametrize("workers, driver_serves, population", [(1, False, (4,)), (3, False, (4, 100)), (1, True, (100,))])
def test_pool_equals_in_process_for_every_method(ray_session, tmp_path, workers, driver_serves, population):
    """One pool per worker count serves every method's run on 4 clients, and with 3 workers on
    100 (clients split unevenly over the workers); with the driver serving the first share beside
    one worker on 100; the pool is reused across runs: its workers start once."""
    from fedsweep.federation.runtime.ray_runtime import ray_pool

    with ray_pool(workers=workers, num_cpus=0.5, num_gpus=0, device="cpu", label="equal", driver_serves=driver_serves) as pool:
        assert pool.lanes == workers + driver_serves
        for clients in population:
            split = [f"partition.clients_f={clients // 2}", f"partition.clients_g={clients - clients // 2}"]
            for name, extra in METHODS.items():
                remote = history(SHORT + split + extra + ["runtime=ray"], tmp_path / f"{name}-{clients}", runtime=pool)
                assert_same_numbers(in_process(clients)[name], remote)
                if name.startswith("fedavg"):  # participation=0.5 of the whole population, whichever groups
                    assert remote[-1]["clients/f"] + remote[-1]["clients/g"] == max(1, round(0.5 * clients))


@pytest.mark.slow
def test_client_threads_give_the_numbers_of_one_thread(tmp_path):
    """``runtime=local`` with 3 threads (three shares of the clients, each on its own model)
    against one thread, for every method on 100 clients; and the same numbers twice."""
    split = ["partition.clients_f=50", "partition.clients_g=50"]
    for name, extra in METHODS.items():
        one = history(SHORT + split + extra + ["runtime=local", "runtime.threads=1"], tmp_path / f"{name}-1")
        three = history(SHORT + split + extra + ["runtime=local", "runtime.threads=3"], tmp_path / f"{name}-3")
        assert_same_numbers(one, three)
        if name == "fednova-momentum":
            again = history(SHORT + split + extra + ["runtime=local", "runtime.threads=3"], tmp_path / f"{name}-3b")
            assert str(again) == str(three)


@pytest.mark.slow
def test_two_pool_runs_with_the_same_workers_are_bit_identical(ray_session, tmp_path):
    from fedsweep.federation.runtime.ray_runtime import ray_pool

    run = SHORT + METHODS["vrcs-minibatch-sampled"] + ["runtime=ray"]
    with ray_pool(workers=3, num_cpus=0.5, num_gpus=0, device="cpu", label="twice") as pool:
        first, second = (history(run, tmp_path / name, runtime=pool) for name in "ab")
    assert str(first) == str(second)  # nan included


def test_communication_counts_the_logical_federation(tmp_path):
    """Bytes and messages as if every contacted client sent its own reply, whoever computed it: a
    contact per group a round touches, a message per client."""
    run = history(SHORT + ["method=fedavg", "method.participation=6", "partition.clients_f=10", "partition.clients_g=6",
                           "rounds=2", "runtime=local"], tmp_path)  # fmt: skip
    last = run[-1]
    assert last["clients/f"] + last["clients/g"] == 6.0
    contacts = sum(int(m[f"clients/{g}"] > 0) for m in run for g in "fg")
    assert last["comm/f"] + last["comm/g"] == contacts
    assert last["comm/messages"] == 2 * 6
    per_message = last["comm/bytes_sent"] / last["comm/messages"]
    assert per_message == last["comm/bytes_received"] / last["comm/messages"] and per_message > 0


def test_same_seed_same_run_different_seed_different_run(tmp_path):
    base = ["rounds=3", "method.q=0.5"]
    a = history(base + ["seed=7"], tmp_path / "a")
    b = history(base + ["seed=7"], tmp_path / "b")
    c = history(base + ["seed=8"], tmp_path / "c")
    assert str(a) == str(b)  # identical, nan included
    assert a[-1]["loss/test"] != c[-1]["loss/test"]


def test_training_improves_the_model(tmp_path):
    rounds = history(["rounds=8", "method.theta=0.5", "seed=0"], tmp_path / "learn")
    assert rounds[-1]["accuracy/test"] > 0.85
    assert rounds[-1]["loss/test"] < rounds[0]["loss/test"]
    assert rounds[-1]["comm/f"] >= 8 and rounds[-1]["comm/g"] >= 8  # one full communication per round


@pytest.mark.slow
def test_a_serving_driver_reads_the_object_store_s_copy_of_the_clients_data(ray_session):
    """The driver's share computes on the examples mapped from Ray's object store, as the workers'
    do: the run holds its clients' data once, not also in the driver's heap."""
    import torch

    from fedsweep.federation.client_data import ClientData
    from fedsweep.federation.runtime.ray_runtime import ray_pool
    from fedsweep.task.datasets import Dataset
    from fedsweep.task.models import build_model

    shards = [Dataset(torch.randn(2000, 1, 10, 10), torch.randint(0, 4, (2000,))) for _ in range(4)]  # 3.2 MB
    data = ClientData.from_groups({"f": shards[:2], "g": shards[2:]})
    with ray_pool(workers=1, num_cpus=0.5, num_gpus=0, device="cpu", label="home", driver_serves=True) as pool:
        pool.attach(data, lambda: build_model("mlp", input_shape=(1, 10, 10), num_classes=4, hidden=6, seed=1))
        address = pool.home.x.data_ptr()
        (mapping,) = [line for line in open("/proc/self/maps")
                      if int(line.split()[0].split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)]  # fmt: skip
        assert "plasma" in mapping, mapping  # Ray's store file, not the heap
        assert pool.lanes == 2 and pool.idle_cpus == 1.0
