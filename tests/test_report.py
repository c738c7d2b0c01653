"""The sweep report's arithmetic: each option's best configuration, ranking by seeds that
reached the target, and seeds averaged at equal communication (more in test_summary.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedsweep.sweep.report import _aligned
from fedsweep.sweep.summary import best_per_option, summarize
from fedsweep.sweep.sweep_file import load_sweep


def sweep_of(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_sweep(path)


def test_each_option_gets_its_best_configuration_and_reaching_the_target_ranks_first(tmp_path):
    sweep = sweep_of(tmp_path, "grid:\n  method:\n    vrcs: {theta: [0.1, 0.5]}\n    fedavg: {lr: [0.1]}\n"
                               "repeats: 2\nmetric: target/comm_g\nmode: min\n")  # fmt: skip
    nan = math.nan
    table = pd.DataFrame({
        "method": ["vrcs"] * 4 + ["fedavg"] * 2,
        "method.theta": [0.1, 0.1, 0.5, 0.5, None, None],
        "method.lr": [None] * 4 + [0.1, 0.1],
        "seed": [0, 1] * 3,
        "target/comm_g": [3.0, nan, 9.0, 11.0, 20.0, 30.0],  # theta=0.1: fastest, but one seed never got there
        "budget/comm_g": [40.0] * 6,
        "target/round": [2.0, nan, 4.0, 5.0, 6.0, 7.0],
        "budget/round": [10.0] * 6,
        "status": ["done"] * 6,
    })  # fmt: skip
    summary = summarize(table, sweep)
    assert summary["reached"].tolist() == ["2/2", "2/2", "1/2"]
    assert summary["method.theta"].tolist()[:1] == [0.5]  # both seeds reached it: ranked above theta=0.1
    assert summary["target/comm_g mean_at_budget"].tolist() == [10.0, 25.0, 21.5]  # (3 + 40) / 2: not 3
    best = best_per_option(table, sweep)
    assert best["method"].tolist() == ["vrcs", "fedavg"] and best["method.theta"].tolist()[0] == 0.5
    plain = sweep_of(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 2\n")
    assert best_per_option(table[table["method"] == "vrcs"], plain) is None  # no config group, no select_seeds: no best table


def test_seeds_are_averaged_at_equal_communication():
    """Seed a reaches comm 2 after round 1; seed b needs rounds 1-2 for comm 1 then 3: each is a
    step function of its communications, blank past its last."""
    a = pd.DataFrame({"comm/g": [2, 4], "accuracy/test": [0.5, 0.7]})
    b = pd.DataFrame({"comm/g": [1, 3], "accuracy/test": [0.4, 0.6]})
    aligned = _aligned([a, b], "comm/g")
    assert aligned.index.tolist() == [1, 2, 3, 4]
    assert aligned.iloc[:, 0].tolist()[1:] == [0.5, 0.5, 0.7] and math.isnan(aligned.iloc[0, 0])
    assert aligned.iloc[:, 1].tolist()[:3] == [0.4, 0.4, 0.6] and math.isnan(aligned.iloc[3, 1])
    assert aligned.mean(axis=1).tolist()[1:3] == pytest.approx([0.45, 0.55])
