"""A user's own dataset, partition, model, loss and method, named by _target_: the examples/
plug-in package runs through fedsweep.run (in-process and on a worker pool) with no change
under fedsweep/, and every mistake in a plug-in's config stops in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fedsweep
from fedsweep.experiment.config import compose, to_container, validate
from fedsweep.core.errors import ConfigError
from fedsweep.experiment.build import check_setup

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PLUGINS = ["plugins=[fedsweep_example]", "hydra.searchpath=[pkg://fedsweep_example.configs]", "data=regression",
           "partition=by_feature", "model=two_layer", "loss=mse", "target_accuracy=null"]  # fmt: skip


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.mark.slow
def test_a_plugin_method_with_its_own_client_program_gives_the_same_numbers_on_a_pool(examples_on_path, ray_session,
                                                                                       tmp_path):  # fmt: skip
    """The example package's ProxPlugin hands its clients its own program (written outside fedsweep):
    in process and on a pool of 2 Ray workers (the package on the workers' path) the numbers agree."""
    from fedsweep.federation.runtime.ray_runtime import ray_pool
    from tests.helpers import history
    base = [*PLUGINS, "method=prox_plugin", "rounds=3", "method.local_epochs=2"]
    local = history([*base, "runtime=local"], tmp_path / "local")
    with ray_pool(workers=2, num_cpus=0.5, num_gpus=0, device="cpu", label="plugin") as pool:
        remote = history([*base, "runtime=ray"], tmp_path / "pool", runtime=pool)
    for a, b in zip(local, remote, strict=True):
        assert b["loss/test"] == pytest.approx(a["loss/test"], rel=1e-6) and b["comm/total"] == a["comm/total"]


def test_the_plugin_package_runs_in_process(examples_on_path, tmp_path):
    history = fedsweep.run_experiment([*PLUGINS, "method=prox_plugin", "rounds=4"], log_dir=tmp_path, progress=False)
    assert history["round"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert history["loss/test"].iloc[-1] < history["loss/test"].iloc[0]  # MSE falls
    assert "accuracy/test" not in history  # a regression loss reports no accuracy
    assert history["comm/f"].iloc[-1] == 4 and history["comm/g"].iloc[-1] == 4  # one local-training contact each


def test_plugins_mix_with_shipped_components(examples_on_path, tmp_path):
    """The user's data and model with the shipped VRCS: a plug-in is just another target."""
    history = fedsweep.run_experiment([*PLUGINS, "method=vrcs", "method.theta=1.0", "rounds=3"], log_dir=tmp_path, progress=False)
    assert history["loss/test"].iloc[-1] < history["loss/test"].iloc[0]


@pytest.mark.slow
def test_the_plugin_package_runs_on_a_worker_pool(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{EXAMPLES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "fedsweep.run", *PLUGINS, "method=prox_plugin", "rounds=2", "runtime=ray",
         "runtime.workers=2", "runtime.num_cpus=0.5", f"log_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"final test loss \d+\.\d+, communications f=2 g=2", done.stdout)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.mu=-1", "method.mu must be >= 0, got method.mu=-1"),
        ("+method.momentum=0.9", "method.momentum=0.9 is not an argument of fedsweep_example.methods.ProxPlugin"),
        ("method.lr=fast", "method.lr must be a number, got method.lr='fast'"),
        ("method._target_=fedsweep_example.methods.Nope", "'fedsweep_example.methods.Nope' cannot be imported"),
        ("data.n=10", "data.n must be an integer >= 50, got data.n=10"),
        ("partition.g_fraction=2", "partition.g_fraction must be in (0, 1)"),
        ("+model.depth=3", "model.depth=3 is not an argument of fedsweep_example.models.TwoLayer; known: width"),
    ],
)
def test_plugin_mistakes_stop_in_one_line(examples_on_path, override, needle):
    with pytest.raises(ConfigError) as info:
        cfg = to_container(compose([*PLUGINS, "method=prox_plugin", override]))
        validate(cfg)
        check_setup(cfg)  # what a sweep runs before Ray starts: data, partition and model built once
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_model_that_does_not_fit_the_data_is_named_before_any_work(examples_on_path):
    cfg = to_container(compose([*PLUGINS[:-2], "model=cnn"]))  # a conv net on 8-feature vectors
    validate(cfg)
    with pytest.raises(ConfigError, match=r"input_shape must be \(C, H, W\) of positive ints, got input_shape=\[8\]"):
        check_setup(cfg)


def test_a_users_config_dir_joins_the_search_path(tmp_path):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "slow_sliding.yaml").write_text("_target_: fedsweep.algorithms.Sliding\ntheta: 0.01\n")
    cfg = to_container(compose(["method=slow_sliding"], config_dirs=[tmp_path]))
    validate(cfg)
    assert cfg["method"] == {"_target_": "fedsweep.algorithms.Sliding", "theta": 0.01}
    with pytest.raises(ConfigError, match="config directory not found"):
        compose([], config_dirs=[tmp_path / "missing"])


def test_the_api_takes_a_mapping_of_dotted_keys(tmp_path):
    from fedsweep.api import make_config

    cfg = make_config({"method": "fedavg", "method.lr": 0.2, "rounds": 2})
    assert cfg["method"]["_target_"] == "fedsweep.algorithms.FedAvg" and cfg["method"]["lr"] == 0.2 and cfg["rounds"] == 2
    with pytest.raises(ConfigError, match="'method.theta' is not a config key"):
        make_config({"method": "fedavg", "method.theta": 0.2})
    with pytest.raises(ConfigError, match="method.lr must be a finite number > 0"):
        make_config({"method": "fedavg", "method.lr": -1})


def test_the_readme_plugin_example_is_the_tested_one_and_runs(tmp_path):
    """The README's FedSGD plug-in (kept verbatim in tests/readme_plugin) runs from a config dir."""
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "tests" / "readme_plugin" / "__init__.py").read_text()
    body = code[code.index("class FedSGD:"):].strip()
    assert body in readme
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "fedsgd.yaml").write_text("_target_: tests.readme_plugin.FedSGD\nlr: 0.1\n")
    history = fedsweep.run_experiment(["plugins=[tests.readme_plugin]", "method=fedsgd", "method.lr=0.3", "rounds=3"],
                                      config_dirs=[tmp_path], log_dir=tmp_path / "run", progress=False)  # fmt: skip
    assert history["loss/test"].iloc[-1] < history["loss/test"].iloc[0]
    assert history["comm/f"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_the_plugin_package_sweeps_and_the_api_takes_a_mapping(ray_session, tmp_path, monkeypatch):
    """examples/sweeps/regression.yaml, a per-method grid (the plug-in method beside VRCS), run by
    the Python API on the session's Ray (its workers import the package through PYTHONPATH); the
    same API takes a sweep as a mapping, checked like a file. (Optuna and ASHA on a sweep:
    tests/test_tune.py.)"""
    import pandas as pd

    monkeypatch.syspath_prepend(str(EXAMPLES))
    table = fedsweep.run_sweep(EXAMPLES / "sweeps" / "regression.yaml", overrides=["rounds=2"], results_dir=tmp_path / "results")
    (folder,) = (tmp_path / "results").iterdir()
    assert pd.read_csv(folder / "results.csv").shape[0] == len(table) == 4 and table["loss/test"].notna().all()
    assert (table["status"] == "done").all()
    assert sorted(table["method"]) == ["prox_plugin", "prox_plugin", "vrcs", "vrcs"]
    assert table.loc[table["method"] == "vrcs", "method.mu"].isna().all()  # mu does not apply to VRCS

    sweep = {"name": "api", "overrides": ["runtime=local", "rounds=1"], "grid": {"method.theta": [0.5, 1.0]},
             "max_concurrent_trials": 2}  # fmt: skip
    with pytest.raises(ConfigError, match="grid.method.theta must be a non-empty list"):
        fedsweep.run_sweep({**sweep, "grid": {"method.theta": []}}, results_dir=tmp_path / "results")
    table = fedsweep.run_sweep(sweep, results_dir=tmp_path / "results")
    assert sorted(table["method.theta"]) == [0.5, 1.0] and (table["status"] == "done").all()
    assert (tmp_path / "results" / "api" / "results.csv").is_file()


def test_the_sweep_command_takes_config_dirs(tmp_path, capsys, monkeypatch):
    """--config-dir joins the search path of every grid point (and the sweep's record)."""
    from fedsweep.cli import tune_main

    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "slow.yaml").write_text("_target_: fedsweep.algorithms.Sliding\ntheta: 0.01\n")
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ngrid:\n  method: [slow, vrcs]\n")
    captured = {}

    def record(sweep, **kwargs):  # the parsed sweep, without running it
        captured["sweep"] = sweep
        raise ConfigError("recorded")

    from fedsweep.sweep import driver

    monkeypatch.setattr(driver, "run_sweep", record)
    assert tune_main([str(path), "--config-dir", str(tmp_path), "--results", str(tmp_path / "r")]) == 2
    from fedsweep.sweep.grid import expand

    points = expand(captured["sweep"])[2]
    assert [p["method"]["_target_"] for p in points] == ["fedsweep.algorithms.Sliding", "fedsweep.algorithms.VRCS"]
