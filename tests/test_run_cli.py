"""`python -m fedsweep.run`: Hydra overrides, one-line errors before anything is written."""

from __future__ import annotations

import pytest
import yaml

from fedsweep.cli import run_main


@pytest.mark.parametrize(
    "args, needle",
    [
        (["method.theta=-1"], "method.theta=-1"),
        (["method.p=1.5"], "method.p=1.5"),
        (["method.q=0"], "method.q=0"),
        (["thetaa=1"], "'thetaa'"),
        (["data=imagenet"], "data/imagenet"),
        (["data._target_=imagenet"], "'imagenet'"),
        (["method.theta=abc"], "method.theta='abc'"),
    ],
)
def test_bad_values_stop_in_one_line_and_write_nothing(tmp_path, capsys, args, needle):
    log_dir = tmp_path / "run"
    assert run_main(args + [f"log_dir={log_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not log_dir.exists()


def test_a_run_writes_its_config_and_scalars(tmp_path, capsys):
    log_dir = tmp_path / "run"
    assert run_main(["rounds=2", "method.theta=0.01", "method.p=0.5", "method.q=0.5", f"log_dir={log_dir}"]) == 0
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert (saved["method"]["theta"], saved["method"]["p"], saved["method"]["q"], saved["rounds"]) == (0.01, 0.5, 0.5, 2)
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert "final test accuracy" in capsys.readouterr().out


def test_cfg_prints_the_composed_config_and_runs_nothing(tmp_path, capsys):
    assert run_main(["--cfg", "method=fedavg", f"log_dir={tmp_path / 'run'}"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["method"]["_target_"] == "fedsweep.algorithms.FedAvg"
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_in_one_line_and_reports_no_nan(tmp_path, capsys):
    """θ = 0.01 makes the fixed-step SGD solver diverge (lr/θ > 2): the run says so, at the round it happens."""
    import math

    from fedsweep.experiment.config import compose
    from fedsweep.core.errors import DivergedError
    from fedsweep.experiment.loop import run_experiment

    sgd = ["solver=steps", "solver.tolerance=null", "method.theta=0.01"]
    assert run_main([*sgd, "method.p=0.5", "method.q=0.5", "rounds=3", f"log_dir={tmp_path / 'cli'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error: diverged at round ") and "method.theta=0.01" in err

    reported = []
    with pytest.raises(DivergedError):
        run_experiment(compose([*sgd, "rounds=3"]), log_dir=tmp_path / "run", report=reported.append,
                       progress=False)
    assert all(math.isfinite(v) for m in reported for k, v in m.items() if not k.startswith("target/"))
