"""Fuzzing sweep files: every generated file either expands or stops with one line, never a
traceback, and nothing is ever written outside the results folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsweep.cli import tune_main

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

KEYS = ["method.theta", "method.p", "method.q", "theta", "rounds", "seed", "method", "model.hidden", "partition.clients_f", "solver.max_steps",
        "solver.tolerance", "runtime.workers", "nope", "data", "method.participation", "../x"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.floats(-2, 2), st.just(float("nan")),
    st.sampled_from(["vrcs", "fedavg", "x", "..", "/tmp", "auto", "1e-3", ""]),
)  # fmt: skip
domains = st.dictionaries(  # a grid value that names a domain, well formed or not
    st.sampled_from(["choice", "uniform", "loguniform", "randint", "normal"]),
    st.one_of(scalars, st.lists(scalars, max_size=3)), min_size=1, max_size=2,
)  # fmt: skip
values = st.one_of(scalars, st.lists(scalars, max_size=3), domains)
ranges = st.tuples(st.floats(0.05, 0.45), st.floats(0.5, 0.95)).map(list)
good_values = st.one_of(  # values every key of the valid grid (theta, p, q) accepts
    st.lists(st.floats(0.05, 0.95), min_size=1, max_size=2),
    ranges.map(lambda r: {"uniform": r}), ranges.map(lambda r: {"loguniform": r}),
    st.lists(st.floats(0.05, 0.95), min_size=1, max_size=3).map(lambda c: {"choice": c}),
)  # fmt: skip
valid = st.fixed_dictionaries(
    {"grid": st.dictionaries(st.sampled_from(["theta", "p", "q"]), good_values, min_size=1, max_size=2)},
    optional={"name": st.sampled_from(["ok", "run_1", "a.b"]), "overrides": st.just(["rounds=1"]),
              "metric": st.sampled_from(["accuracy/test", "loss/test"]), "mode": st.sampled_from(["max", "min"]),
              "max_concurrent_trials": st.integers(1, 2), "max_trials": st.integers(4, 10),
              "search": st.sampled_from(["grid", "random", "optuna"]), "num_samples": st.integers(1, 3),
              "scheduler": st.sampled_from(["asha", {"name": "asha", "grace_period": 1, "reduction_factor": 2}]),
              "rank": st.sampled_from(["last", "best"]), "repeats": st.integers(1, 2)},
)  # fmt: skip
broken = {
    "name": st.one_of(st.sampled_from(["ok", ".", "..", "../up", "a/b", "", "x" * 300]), scalars),
    "overrides": st.one_of(st.lists(st.sampled_from(["rounds=1", "method.theta=-1", "method.p=2", "method=none", "x=1",
                                                     "runtime=ray", "data=imagenet"]), max_size=3), scalars),
    "grid": st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=3), scalars),
    "metric": st.one_of(st.sampled_from(["accuracy/test", "loss/test", "accuracy", "target/round", "comm/f", ""]),
                        scalars),
    "mode": st.one_of(st.sampled_from(["max", "min", "median"]), scalars),
    "max_concurrent_trials": scalars,
    "max_trials": scalars,
    "search": st.one_of(st.sampled_from(["grid", "random", "optuna", "bayes"]), scalars),
    "num_samples": scalars,
    "scheduler": st.one_of(
        st.sampled_from(["asha", "hyperband"]), scalars,
        st.dictionaries(st.sampled_from(["name", "grace_period", "reduction_factor", "patience"]),
                        st.one_of(st.just("asha"), scalars), max_size=3),
    ),
    "rank": st.one_of(st.sampled_from(["last", "best", "worst"]), scalars),
    "repeats": scalars,
    "extra": scalars,
}  # fmt: skip


@st.composite
def sweeps(draw):
    """A valid sweep file with zero to two of its keys replaced by anything."""
    raw = draw(valid)
    for key in draw(st.lists(st.sampled_from(sorted(broken)), max_size=2, unique=True)):
        raw[key] = draw(broken[key])
    return raw


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=sweeps())
def test_any_sweep_file_runs_or_stops_in_one_line(tmp_path_factory, monkeypatch, capsys, raw):
    class RayStarted(Exception):
        pass

    def no_ray(*args, **kwargs):  # a file that passes every check would go on to Ray and Tune here
        raise RayStarted

    from fedsweep.sweep import driver

    monkeypatch.setattr(driver, "_run_sweep", no_ray)
    work = tmp_path_factory.mktemp("fuzz")
    results = work / "results"
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    before = set(_files(work))
    try:
        status = tune_main([str(path), "--results", str(results)])
    except RayStarted:
        status = None  # valid: it got as far as starting Ray
    err = capsys.readouterr().err.strip()
    if status is not None:
        assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    written = set(_files(work)) - before
    assert all(results in p.parents for p in written), written


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/../../b"])
def test_no_name_escapes_the_results_folder(tmp_path, capsys, name):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": name, "grid": {"method.theta": [0.1]}}))
    assert tune_main([str(path), "--results", str(tmp_path / "results")]) == 2
    assert _files(tmp_path) == [path]  # nothing written anywhere
