"""Shared fixtures: one Ray for the whole session (starting Ray costs seconds), and one torch
thread in the test process: its tensors are small, and on a 2-core machine an idle second
thread spins against the Ray workers the tests start (shared helpers: ``tests/helpers.py``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# tests never join a Ray that `fedsweep ray start` keeps for its user: an empty state folder
os.environ["FEDSWEEP_STATE_DIR"] = tempfile.mkdtemp(prefix="fedsweep-test-state-")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray with 2 CPUs, no dashboard, torn down at the end (never `ray stop`)."""
    import ray

    if not ray.is_initialized():
        root = Path(__file__).resolve().parents[1]
        path = os.pathsep.join([str(root / "examples"), str(root), os.environ.get("PYTHONPATH", "")])
        ray.init(
            runtime_env={"env_vars": {"PYTHONPATH": path}},  # plug-in packages the tests use, on the workers too
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=300 * 1024**2,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
        )
    yield ray
    ray.shutdown()
