"""The wheel carries the configs: a config composes from the installed package, away from the repo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUTSIDE = """
import json, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]  # not the repo's checkout
from fedsweep.experiment.config import CONFIG_DIR, compose, to_container, validate
from fedsweep.experiment.build import check_setup
import pytest

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier
validate(to_container(compose([])))  # the default config, checked and built (digits ships inside the wheel's deps)
check_setup(to_container(compose([])))
cfg = to_container(compose(["method=fedprox", "rounds=3"]))
print(json.dumps({"dir": str(CONFIG_DIR), "method": cfg["method"]["_target_"], "rounds": cfg["rounds"]}))
"""


def test_a_built_wheel_composes_configs_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # a clean copy: setuptools would reuse (and package) a stale build/ folder
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "fedsweep", source / "fedsweep", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fedsweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fedsweep/configs/config.yaml" in names and "fedsweep/configs/method/fedprox.yaml" in names

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", OUTSIDE], cwd=elsewhere, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["dir"]).is_relative_to(site) and (result["method"], result["rounds"]) == ("fedsweep.algorithms.FedProx", 3)
