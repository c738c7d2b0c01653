"""The `ray up` cluster file passes Ray's own schema check (offline; Ray's version is pinned)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster" / "cluster.yaml"


def test_cluster_file_is_valid():
    cfg = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(cfg)
    assert cfg["cluster_name"] == "fedsweep"
    assert any("make install" in c for c in cfg["setup_commands"])


def test_a_misspelt_key_is_caught():
    raw = yaml.safe_load(CLUSTER.read_text())
    bad = copy.deepcopy(raw)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(bad))
