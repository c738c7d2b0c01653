"""Sweep files and configs: bad input stops with one line naming the value, before Ray starts."""

from __future__ import annotations

import re

import textwrap

import pytest

from fedsweep.cli import tune_main
from fedsweep.experiment.config import compose, to_container, validate
from fedsweep.core.errors import ConfigError
from fedsweep.experiment.components import label
from fedsweep.experiment.build import check_setup
from fedsweep.sweep.sweep_file import load_sweep
from fedsweep.sweep.grid import expand

GOOD = """
name: small
overrides: [rounds=2]
grid:
  method.theta: [0.1, 1.0]
  method.p: [0.5]
"""


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_sweep_expands_to_the_full_grid(tmp_path):
    sweep = load_sweep(write(tmp_path, GOOD))
    base, _, points = expand(sweep)
    assert base["rounds"] == 2
    assert [(c["method"]["theta"], c["method"]["p"]) for c in points] == [(0.1, 0.5), (1.0, 0.5)]


@pytest.mark.parametrize(
    "text, needle",
    [
        (GOOD + "colour: blue\n", "'colour'"),
        ("grid:\n  method.theta: [0.1, -0.5]\n", "method.theta=-0.5"),
        ("grid:\n  method.theta: [0.0]\n", "method.theta=0.0"),
        ("grid:\n  method.p: [0.5, 1.5]\n", "method.p=1.5"),
        ("grid:\n  method.p: [-0.1]\n", "method.p=-0.1"),
        ("grid:\n  method.q: [0.0]\n", "method.q=0.0"),
        ("grid:\n  method.q: [1.5]\n", "method.q=1.5"),
        ("grid:\n  thetaa: [0.1]\n", "'thetaa'"),
        ("grid:\n  method.theta: 0.1\n", "grid.method.theta"),
        ("grid: [1, 2\n", "not valid YAML"),
        ("overrides: [data=imagenet]\ngrid:\n  method.theta: [0.1]\n", "imagenet"),
        ("overrides: [no_such_key=1]\ngrid:\n  method.theta: [0.1]\n", "no_such_key"),
        ("name: ..\ngrid:\n  method.theta: [0.1]\n", "name='..'"),
        ("name: .\ngrid:\n  method.theta: [0.1]\n", "name='.'"),
        ("name: ../escape\ngrid:\n  method.theta: [0.1]\n", "name='../escape'"),
        ("name: /tmp/x\ngrid:\n  method.theta: [0.1]\n", "name='/tmp/x'"),
        ("metric: accuracy\ngrid:\n  method.theta: [0.1]\n", "metric='accuracy'"),
        ("grid:\n  method.theta: [0.1, 0.2]\n  method.p: [0.1, 0.2, 0.3]\nmax_trials: 5\n", "makes 6 trials, more than max_trials=5"),
        ("grid:\n  method.theta: [0.1]\nmax_trials: 0\n", "max_trials=0"),
        ("grid:\n  method.theta: [0.1]\nrepeats: 0\n", "repeats=0"),
        ("grid:\n  seed: [1, 2]\nrepeats: 3\n", "drop seed from the grid"),
        ("grid:\n  method.theta: [0.1, 0.2, 0.3]\nrepeats: 4\nmax_trials: 10\n", "makes 12 trials"),
        # search spaces, searches, schedulers, ranking
        ("grid:\n  method.theta: {normal: [0, 1]}\n", "grid.method.theta must name one domain"),
        ("grid:\n  method.theta: {uniform: [1.0, 0.5]}\n", "uniform needs lo < hi, got uniform=[1.0, 0.5]"),
        ("grid:\n  method.theta: {uniform: [0.5]}\n", "uniform needs [lo, hi]"),
        ("grid:\n  method.theta: {loguniform: [0.0, 1.0]}\n", "loguniform needs 0 < lo, got loguniform=[0.0, 1.0]"),
        ("grid:\n  method.theta: {uniform: [nan, 1.0]}\n", "two finite numbers"),
        ("grid:\n  similarity.iterations: {randint: [1.5, 4]}\n", "randint needs two integers"),
        ("grid:\n  method.theta: {choice: []}\n", "choice needs a non-empty list"),
        ("grid:\n  method.theta: {uniform: [-1.0, 1.0]}\n", "method.theta=-1.0"),
        ("grid:\n  method.p: {uniform: [0.5, 1.5]}\n", "method.p=1.4999"),
        ("grid:\n  method.q: {choice: [0.5, 0.0]}\nsearch: random\nnum_samples: 2\n", "method.q=0.0"),
        ("grid:\n  method.theta: [0.1]\nsearch: bayes\n", "search='bayes'"),
        ("grid:\n  method.theta: {uniform: [0.1, 1]}\nsearch: random\n", "search: random needs num_samples"),
        ("grid:\n  method.theta: [0.1]\nnum_samples: 0\n", "num_samples=0"),
        ("grid:\n  method.theta: [0.1, 0.2]\nnum_samples: 3\n", "num_samples=3 would run every grid point 3 times"),
        ("grid:\n  method.theta: {uniform: [0.1, 1]}\nsearch: optuna\nnum_samples: 4\nrepeats: 2\n", "repeats=2 needs search: grid"),
        ("grid:\n  method: [vrcs, fedavg]\nsearch: optuna\nnum_samples: 4\n", "not config groups: grid.method"),
        ("grid:\n  method: {uniform: [0, 1]}\n", "grid.method is a config group"),
        ("grid:\n  method.theta: {uniform: [0.1, 1]}\nsearch: random\nnum_samples: 20\nmax_trials: 10\n",
         "the random search makes 20 trials, more than max_trials=10"),
        ("grid:\n  method.theta: {uniform: [0.1, 1]}\n  method.q: [0.3, 0.6]\nnum_samples: 6\nmax_trials: 10\n", "makes 12 trials"),
        ("grid:\n  method.theta: [0.1]\nscheduler: hyperband\n", "scheduler must be one of asha"),
        ("grid:\n  method.theta: [0.1]\nscheduler: {name: asha, grace_period: 0}\n", "scheduler.grace_period"),
        ("grid:\n  method.theta: [0.1]\nscheduler: {name: asha, reduction_factor: 1}\n", "scheduler.reduction_factor"),
        ("grid:\n  method.theta: [0.1]\nscheduler: {name: asha, patience: 3}\n", "unknown key scheduler.patience"),
        ("overrides: [rounds=5]\ngrid:\n  method.theta: [0.1]\nscheduler: {name: asha, grace_period: 6}\n",
         "grace_period=6 is more than the trials' rounds=5"),
        ("grid:\n  method.theta: [0.1]\nscheduler: asha\nmetric: target/round\nmode: min\n", "not reported every round"),
        ("grid:\n  method.theta: {uniform: [0.1, 1]}\nsearch: optuna\nnum_samples: 2\nmetric: comm/f\n",
         "metric='comm/f' is not reported every round, which search: optuna needs"),
        ("grid:\n  method.theta: [0.1]\nrank: worst\n", "rank='worst'"),
    ],
)
def test_bad_sweep_files_fail_in_one_line_before_ray(tmp_path, monkeypatch, capsys, text, needle):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for a bad sweep file")

    monkeypatch.setattr(ray, "init", no_ray)
    path = write(tmp_path, text)
    assert tune_main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "results").exists()  # nothing written


SAMPLED = """
overrides: [rounds=4]
grid:
  method.theta: {loguniform: [0.01, 1.0]}
  method.p: {uniform: [0.2, 0.8]}
  similarity.iterations: {randint: [1, 4]}
  method.q: [0.3, 0.6]
"""


@pytest.mark.parametrize("search, trials", [("grid", 2 * 3), ("random", 3), ("optuna", 3)])
def test_sampled_keys_become_tune_domains(tmp_path, search, trials):
    """Lists are grid axes in a grid search and choices in a sampled one; domains are Tune's."""
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

    from fedsweep.sweep.grid import param_space, trial_count

    sweep = load_sweep(write(tmp_path, SAMPLED + f"search: {search}\nnum_samples: 3\n"))
    assert trial_count(sweep) == trials
    base, grid, points = expand(sweep)
    space = param_space(base, grid, sweep.search)
    assert isinstance(space["method"]["theta"], Float) and isinstance(space["method"]["theta"].get_sampler(), LogUniform)
    assert (space["method"]["theta"].lower, space["method"]["theta"].upper) == (0.01, 1.0)
    assert isinstance(space["method"]["p"], Float) and isinstance(space["method"]["p"].get_sampler(), Uniform)
    assert isinstance(space["similarity"]["iterations"], Integer) and (space["similarity"]["iterations"].lower, space["similarity"]["iterations"].upper) == (1, 4)
    if search == "grid":
        assert space["method"]["q"] == tune.grid_search([0.3, 0.6])
    else:
        assert isinstance(space["method"]["q"], Categorical) and space["method"]["q"].categories == [0.3, 0.6]
    assert space["rounds"] == 4 and base["rounds"] == 4
    # checked before Ray: both ends of every range and every option, against every grid point
    thetas = {c["method"]["theta"] for c in points}
    assert 0.01 in thetas and max(thetas) == pytest.approx(1.0) and max(thetas) < 1.0
    assert {c["similarity"]["iterations"] for c in points} == {1, 3}
    assert {c["method"]["q"] for c in points} == {0.3, 0.6}


def test_a_random_search_samples_config_groups_as_choices(tmp_path):
    from ray.tune.search.sample import Categorical

    from fedsweep.sweep.grid import param_space

    sweep = load_sweep(write(tmp_path, "grid:\n  method: [vrcs, fedavg]\n  seed: {randint: [0, 100]}\n"
                                       "search: random\nnum_samples: 4\n"))  # fmt: skip
    base, grid, _ = expand(sweep)
    choice = param_space(base, grid, sweep.search)["method"]
    assert isinstance(choice, Categorical) and [label(m) for m in choice.categories] == ["vrcs", "fedavg"]
    with pytest.raises(ConfigError, match="grid keys inside the config group method must be lists"):
        expand(load_sweep(write(tmp_path, "grid:\n  method: [vrcs, sliding]\n  method.theta: {uniform: [0.1, 1]}\n")))


def test_search_and_scheduler_follow_the_sweep(tmp_path):
    from dataclasses import replace

    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from fedsweep.sweep.driver import scheduler, search_algorithm

    text = SAMPLED + "search: optuna\nnum_samples: 3\nmetric: loss/test\nmode: min\nscheduler: {name: asha, grace_period: 2}\n"
    sweep = load_sweep(write(tmp_path, text))
    assert sweep.scheduler.grace_period == 2 and sweep.scheduler.reduction_factor == 4
    optuna = search_algorithm(sweep, seed=0)
    assert isinstance(optuna, OptunaSearch) and (optuna.metric, optuna.mode) == ("loss/test", "min")
    limited = search_algorithm(replace(sweep, max_concurrent_trials=2), seed=0)
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 2 and limited.searcher.metric == "loss/test"
    asha = scheduler(sweep, rounds=4)
    assert isinstance(asha, ASHAScheduler)
    assert (asha._time_attr, asha._max_t, asha.metric, asha._mode) == ("round", 4, "loss/test", "min")  # Ray pinned
    plain = load_sweep(write(tmp_path, GOOD))
    assert isinstance(search_algorithm(plain, seed=0), BasicVariantGenerator) and scheduler(plain, rounds=2) is None
    assert search_algorithm(replace(plain, max_concurrent_trials=2), seed=0).max_concurrent == 2
    assert load_sweep(write(tmp_path, GOOD + "scheduler: asha\n")).scheduler.grace_period == 1


def test_missing_sweep_file(capsys, tmp_path):
    assert tune_main([str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model=transformer", "model"),
        ("solver=steps solver.optimizer.lr=-1", "solver.optimizer.lr must be a finite number > 0, got solver.optimizer.lr=-1"),
        ("rounds=0", "rounds=0"),
        ("solver=steps solver.optimizer._target_=torch.optim.Sgdx", "Sgdx"),
        ("runtime._target_=spark.Runtime", "spark"),
        ("solver.max_steps=0", "solver.max_steps=0"),
        ("solver.tolerance=inf", "solver.tolerance=inf"),
    ],
)
def test_bad_config_values(override, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(compose(override.split()))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["runtime=ray", "runtime.workers=-1"], "runtime.workers=-1"),
        (["runtime=ray", "runtime.workers=many"], "runtime.workers='many'"),
        (["runtime=ray", "runtime.num_cpus=-1"], "runtime.num_cpus=-1"),
        (["runtime=ray", "runtime.num_gpus=half"], "runtime.num_gpus='half'"),
        (["runtime=ray", "runtime.max_restarts=-1"], "runtime.max_restarts=-1"),
        (["runtime=ray", "runtime.driver_serves=sometimes"], "runtime.driver_serves must be auto, true or false, got runtime.driver_serves='sometimes'"),
        (["runtime.vectorize=sometimes"], "runtime.vectorize='sometimes'"),
        (["runtime.threads=0"], "runtime.threads must be auto or an integer >= 1, got runtime.threads=0"),
        (["runtime.threads=many"], "runtime.threads='many'"),
        (["method=fedavg", "method.participation=0.0"], "method.participation=0.0"),
        (["method=fedavg", "method.participation=1.5"], "method.participation=1.5"),
        (["method=fedavg", "method.participation=0"], "method.participation=0"),
        (["method.local_participation=-3"], "method.local_participation=-3"),
        (["method.local_participation=all"], "method.local_participation='all'"),
        (["solver=steps", "solver.optimizer._target_=torch.optim.Optimizer"], "solver.optimizer.lr=0.05 is not an argument of torch.optim.Optimizer"),
        (["model=cnn", "model.norm=batch"], "model.norm='batch' is not supported"),
        (["solver=steps", "+solver.optimizer.momentum=abc"], "solver.optimizer.momentum must be a number, got solver.optimizer.momentum='abc'"),
        (["solver=steps", "+solver.optimizer.colour=red"], "solver.optimizer.colour='red' is not an argument of torch.optim.SGD"),
        (["solver=steps", "+solver.optimizer.nesterov=maybe"], "solver.optimizer.nesterov must be true or false"),
    ],
)
def test_bad_pool_and_participation_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        cfg = to_container(compose(overrides))
        validate(cfg)
        check_setup(cfg)  # what a sweep also runs once per data/partition/model before Ray starts
    assert "\n" not in str(info.value)


def test_missing_key_is_named():
    cfg = to_container(compose([]))
    del cfg["method"]["theta"]
    with pytest.raises(ConfigError, match="theta"):
        validate(cfg)


def test_grid_over_a_config_group(tmp_path):
    sweep = load_sweep(write(tmp_path, "grid:\n  method: [vrcs, fedavg]\n  method.theta: [0.5]\n"))
    _, grid, points = expand(sweep)
    assert [label(c["method"]) for c in points] == ["vrcs", "fedavg"]
    assert points[1]["method"]["local_epochs"] >= 1  # the option's own keys come along
    assert points[0]["method"]["theta"] == 0.5 and "theta" not in points[1]["method"]


def test_each_method_gets_its_own_grid(tmp_path):
    """Keys inside a config group apply to the options that have them: a union of grids."""
    text = "overrides: [method.lr=0.2]\ngrid:\n  method: [vrcs, fedavg]\n  method.theta: [0.1, 0.5]\n  method.local_epochs: [1, 3]\n"
    points = expand(load_sweep(write(tmp_path, text)))[2]
    got = [(label(p["method"]), p["method"].get("theta"), p["method"].get("local_epochs"), p["method"].get("lr")) for p in points]
    assert got == [("vrcs", 0.1, None, None), ("vrcs", 0.5, None, None), ("fedavg", None, 1, 0.2), ("fedavg", None, 3, 0.2)]
    with pytest.raises(ConfigError, match="'method.mu' is a key of none of method's options"):
        expand(load_sweep(write(tmp_path, "grid:\n  method: [vrcs, fedavg]\n  method.mu: [0.1]\n")))


def test_unknown_group_option_is_named(tmp_path, capsys):
    path = write(tmp_path, "grid:\n  method: [vrcs, scaffolding]\n")
    assert tune_main([str(path), "--results", str(tmp_path / "r")]) == 2
    assert "scaffolding" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, participants, gpus, share",
    [("auto", 5, 0, 0.0), ("auto", 5, 1, 0.125), ("auto", 4, 2, 0.25), ("auto", 2, 1, 0.5), (0.5, 5, 0, 0.5)],
)
def test_gpu_share(setting, participants, gpus, share):
    """auto: the largest 1/2^k that fits a trial's workers and its server on one GPU."""
    from fedsweep.federation.runtime.resources import gpu_share

    assert gpu_share(setting, participants, gpus) == share


@pytest.mark.parametrize(
    "override, needle",
    [
        ("partition.server_fraction=1.5", "server_fraction=1.5"),
        ("partition.clients_f=0", "clients_f=0"),
        ("partition.scheme=random", "'random'"),
        ("partition.dirichlet_alpha=-1", "dirichlet_alpha=-1"),
        ("+partition.colour=red", "partition.colour='red' is not an argument of fedsweep.task.make_partition"),
    ],
)
def test_partition_values_are_checked_before_any_data_loads(override, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(compose([override]))


@pytest.mark.parametrize("name", ["vrcs_grid", "methods_digits", "vrcs_optuna", "paper_digits", "paper_fmnist", "paper_mnist"])
def test_shipped_sweep_files_expand(name):
    from pathlib import Path

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / f"{name}.yaml")
    try:
        _, _, points = expand(sweep)
    except ConfigError as err:  # MNIST is downloaded: offline, one line that says so
        assert name == "paper_mnist" and "could not be downloaded" in str(err) and "\n" not in str(err)
        pytest.skip(f"MNIST is not available offline: {err}")
    data = {"paper_fmnist": "load_fashion_mnist", "paper_mnist": "load_mnist"}.get(name, "load_digits")
    assert all(p["data"]["_target_"] == f"fedsweep.task.{data}" for p in points)
    if name == "vrcs_grid":
        assert len(points) >= 8 and {(p["method"]["theta"], p["method"]["p"], p["method"]["q"]) for p in points}.__len__() == len(points)
    elif name == "vrcs_optuna":
        assert sweep.search == "optuna" and sweep.scheduler is not None and sweep.num_samples >= 4
    elif name.startswith("paper_"):  # the paper's axis, every method of the comparison on its own grid
        assert (sweep.metric, sweep.mode) == ("target/comm_f", "min")
        assert {label(p["method"]) for p in points} >= {"vrcs", "accvrcs", "c_acc_extragradient", "sliding", "fedavg",
                                                        "fedprox", "scaffold"}  # fmt: skip
        ps = {p["method"]["p"] for p in points if label(p["method"]) == "vrcs"}
        assert min(ps) <= 0.3 <= max(ps)  # around delta_f/(delta_f + delta_g) measured on digits
        if name == "paper_digits":  # chosen on some seeds, reported on fresh ones
            select, report = sweep.seed_split
            assert set(select).isdisjoint(report) and len(report) >= 5
    else:
        methods = [label(p["method"]) for p in points]  # each method on its own grid of 4
        assert sorted(set(methods)) == ["fedavg", "server_only", "sliding", "vrcs"]
        assert all(methods.count(m) == 4 for m in methods) and len(set(map(repr, points))) == 16
        assert all(p["runtime"]["_target_"].endswith("ray_pool") for p in points)


def test_trial_reserves_one_bundle_per_worker_and_a_gpu_share_for_its_server():
    """The pool's size comes from the trial's share of the cluster, never from the client count."""
    from fedsweep.experiment.config import resolve_runtime
    from fedsweep.sweep.driver import trial_resources

    cfg = to_container(
        compose(["runtime=ray", "runtime.num_cpus=0.5", "partition.clients_f=300", "partition.clients_g=200"])
    )
    cpu_only = trial_resources(resolve_runtime(cfg, cpus=2, gpus=0))  # the trial serves a share: 3 workers and itself
    assert not cpu_only.head_bundle_is_empty and cpu_only.bundles == [{"CPU": 0.5}] * 4
    coordinating = {**cfg, "runtime": {**cfg["runtime"], "driver_serves": False}}
    only_workers = trial_resources(resolve_runtime(coordinating, cpus=2, gpus=0))
    assert only_workers.head_bundle_is_empty and only_workers.bundles == [{"CPU": 0.5}] * 4  # Tune leaves out an empty head
    with_gpu = trial_resources(resolve_runtime(cfg, cpus=2, gpus=1))
    assert with_gpu.bundles == [{"GPU": 0.125}] + [{"CPU": 0.5, "GPU": 0.125}] * 4
    assert with_gpu.required_resources["GPU"] <= 1  # a trial fits on one GPU
    fixed = {**cfg, "runtime": {**cfg["runtime"], "workers": 3}}
    assert trial_resources(resolve_runtime(fixed, cpus=64, gpus=0)).bundles == [{"CPU": 0.5}] * 3
    # "auto" left in a trial's config (a grid can set it) resolves against the trial's share
    assert trial_resources(cfg, share={"cpus": 2, "gpus": 0}).bundles == [{"CPU": 0.5}] * 4
    # a share of one CPU: no pool, the trial computes in-process on its own CPU (and GPU share)
    assert trial_resources(resolve_runtime(cfg, cpus=1, gpus=0)).bundles == [{"CPU": 1}]
    assert trial_resources(resolve_runtime(cfg, cpus=1, gpus=1)).bundles == [{"CPU": 1, "GPU": 1.0}]


def test_the_driver_serves_a_share_of_an_auto_sized_cpu_pool():
    """``driver_serves: auto``: the run's own process takes one of the ``auto`` workers' places
    on CPUs; an explicit size keeps its meaning (that many workers), and a GPU pool keeps its
    workers; below 2 CPUs the run serves its clients in-process as before."""
    from fedsweep.federation.runtime.resources import resolve

    pool = {"workers": "auto", "num_cpus": 1, "num_gpus": "auto", "driver_serves": "auto"}
    assert resolve(pool, cpus=2, gpus=0) == {**pool, "workers": 1, "num_gpus": 0.0, "driver_serves": True}
    assert resolve(pool, cpus=8, gpus=0)["workers"] == 7
    assert resolve({**pool, "num_cpus": 0.5}, cpus=2, gpus=0)["workers"] == 3  # four lanes of half a CPU
    assert resolve({**pool, "workers": 2}, cpus=2, gpus=0) == {**pool, "workers": 2, "num_gpus": 0.0, "driver_serves": False}
    assert resolve(pool, cpus=2, gpus=1) == {**pool, "workers": 2, "num_gpus": 0.25, "driver_serves": False}
    assert resolve({**pool, "num_gpus": 0.5}, cpus=2, gpus=0)["driver_serves"] is False
    assert resolve({**pool, "driver_serves": False}, cpus=2, gpus=0)["workers"] == 2
    assert resolve({**pool, "workers": 2, "driver_serves": True}, cpus=2, gpus=0)["driver_serves"] is True
    assert resolve(pool, cpus=1, gpus=0) == {**pool, "workers": 0, "num_gpus": 0.0, "driver_serves": False}
    assert resolve({**pool, "num_cpus": 2}, cpus=2, gpus=0)["workers"] == 0  # one lane: the run's own process


def test_a_huge_grid_stops_before_it_expands(tmp_path, capsys):
    """40 × 40 × 40 = 64,000 trials: one line at once, naming the count, nothing validated or started."""
    values = "[" + ", ".join(str(0.01 * (i + 1)) for i in range(40)) + "]"
    path = write(tmp_path, f"grid:\n  method.theta: {values}\n  method.p: {values}\n  method.q: {values}\n")
    assert tune_main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert "makes 64000 trials, more than max_trials=1000" in err and len(err.splitlines()) == 1


def test_repeats_add_seeds_to_the_grid(tmp_path):
    sweep = load_sweep(write(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 3\n"))
    _, _, points = expand(sweep)
    assert sweep.repeats == 3 and sweep.grid["seed"] == [0, 1, 2]
    assert sorted((p["method"]["theta"], p["seed"]) for p in points) == [(t, s) for t in (0.1, 0.5) for s in range(3)]


def test_the_summary_gives_mean_std_and_a_student_t_interval(tmp_path):
    import math

    import pandas as pd
    from scipy.stats import t as student_t

    from fedsweep.sweep.summary import summarize

    sweep = load_sweep(write(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 3\n"))
    table = pd.DataFrame({
        "method.theta": [0.1, 0.1, 0.1, 0.5, 0.5, 0.5], "seed": [0, 1, 2] * 2,
        "accuracy/test": [0.5, 0.6, 0.7, 0.9, 0.8, 0.0], "comm/f": [1, 2, 3, 4, 5, 6],
        "status": ["done"] * 5 + ["diverged at 2"],
    })  # fmt: skip
    summary = summarize(table, sweep)
    best, worst = summary.iloc[0], summary.iloc[1]
    assert (best["method.theta"], best["seeds"], best["finished"]) == (0.5, 3, 2)  # the diverged seed left out
    assert best["accuracy/test mean"] == pytest.approx(0.85)
    assert best["accuracy/test std"] == pytest.approx(math.sqrt(0.005))
    assert best["accuracy/test ci95"] == pytest.approx(student_t.ppf(0.975, 1) * math.sqrt(0.005) / math.sqrt(2))
    assert worst["accuracy/test mean"] == pytest.approx(0.6) and worst["comm/f mean"] == pytest.approx(2.0)
    assert worst["accuracy/test ci95"] == pytest.approx(student_t.ppf(0.975, 2) * 0.1 / math.sqrt(3))


def test_command_line_overrides_and_name_follow_the_file(tmp_path):
    path = write(tmp_path, GOOD)
    sweep = load_sweep(path, overrides=["rounds=3", "method.theta=0.7"], name="other")
    assert sweep.name == "other" and sweep.overrides == ("rounds=2", "rounds=3", "method.theta=0.7")
    base, _, _ = expand(sweep)
    assert base["rounds"] == 3  # the command line comes after the file
    assert "overrides=['rounds=3', 'method.theta=0.7']" in sweep.source  # recorded: a resume must repeat them
    assert load_sweep(path).source != sweep.source


def test_a_bad_command_line_override_stops_in_one_line(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert tune_main([str(path), "rounds=0", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "rounds=0" in err and len(err.splitlines()) == 1
    assert tune_main([str(path), "--name", "..", "--results", str(tmp_path / "r")]) == 2
    assert "name='..'" in capsys.readouterr().err


def test_the_fedsweep_command_runs_both_entry_points(tmp_path, capsys):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from fedsweep import cli

    assert cli.main(["run", "--cfg", "method.theta=0.25"]) == 0
    assert "theta: 0.25" in capsys.readouterr().out
    assert cli.main(["tune", str(tmp_path / "missing.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert cli.main(["nope"]) == 2
    script = shutil.which("fedsweep", path=str(Path(sys.executable).parent))
    assert script, "pip install puts the fedsweep console script beside python"
    done = subprocess.run([script, "run", "--cfg", "rounds=4"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "rounds: 4" in done.stdout
