"""Statistics over seeds that count every seed: seeds that never reach the target are censored
(median "never", mean at their budget), not dropped; the best configurations are chosen on
select seeds and reported on fresh ones."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import t as student_t

from fedsweep.cli import tune_main
from fedsweep.sweep.summary import best_per_option, printable, readable, summarize
from fedsweep.sweep.sweep_file import load_sweep

nan = math.nan
GROUP = "grid:\n  method:\n    vrcs: {theta: [0.1, 0.5]}\n    fedavg: {lr: [0.1]}\n"


def sweep_of(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_sweep(path)


def trials(configs: dict[float, dict], seeds: list[int]) -> pd.DataFrame:
    """A results table of a grid over method.theta: per theta, per seed, ``round`` (the round
    that reached the target, NaN: never) and ``comm`` (comm_f and comm_g alike, to the target)
    and ``budget`` (final comm counts); 10 rounds."""
    rows = []
    for theta, values in configs.items():
        for i, seed in enumerate(seeds):
            r, c, b = values["round"][i], values.get("comm", values["round"])[i], values.get("budget", [20.0] * len(seeds))[i]
            rows.append({"method.theta": theta, "seed": seed, "accuracy/test": 0.8, "comm/f": b, "comm/g": b,
                         "target/round": r, "target/comm_f": c, "target/comm_g": c, "target/comm_total": 2 * c,
                         "budget/round": 10.0, "budget/comm_f": b, "budget/comm_g": b, "budget/comm_total": 2 * b,
                         "status": "done"})  # fmt: skip
    return pd.DataFrame(rows)


def test_two_of_five_seeds_reaching_give_a_median_of_never_and_a_mean_at_budget(tmp_path):
    sweep = sweep_of(tmp_path, "grid:\n  method.theta: [0.5]\nrepeats: 5\nmetric: target/comm_f\nmode: min\n")
    table = trials({0.5: {"round": [3, nan, 7, nan, nan], "comm": [6, nan, 14, nan, nan],
                          "budget": [20, 21, 22, 23, 24]}}, list(range(5)))  # fmt: skip
    row = summarize(table, sweep).iloc[0]
    assert (row["seeds"], row["finished"], row["reached"]) == (5, 5, "2/5")
    assert math.isinf(row["target/round median"]) and math.isinf(row["target/comm_f median"])
    at_budget = [3, 10, 7, 10, 10]  # never-reached seeds at the run's rounds
    assert row["target/round mean_at_budget"] == pytest.approx(8.0)
    sd = pd.Series(at_budget).std()
    assert row["target/round ci95_at_budget"] == pytest.approx(student_t.ppf(0.975, 4) * sd / math.sqrt(5))
    comm = [6, 21, 14, 23, 24]  # never-reached seeds at their final comm count
    assert row["target/comm_f mean_at_budget"] == pytest.approx(sum(comm) / 5)
    assert row["target/comm_total mean_at_budget"] == pytest.approx(2 * sum(comm) / 5)
    assert not any(c.endswith(("target/round mean", "target/comm_f mean")) for c in row.index)  # no mean over the successes
    written = readable(summarize(table, sweep))
    assert written["target/comm_f median"].tolist() == ["never"]
    shown = printable(summarize(table, sweep)).iloc[0]
    assert shown["target/comm_f median; at budget ± ci95"].startswith("never; 17.6 ± ")


def test_the_median_is_finite_once_more_than_half_the_seeds_reach(tmp_path):
    sweep = sweep_of(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 4\n")
    table = trials({0.1: {"round": [4, 2, nan, 9]}, 0.5: {"round": [4, 2, nan, nan]}}, list(range(4)))
    summary = summarize(table, sweep).set_index("method.theta")
    assert summary.loc[0.1, "reached"] == "3/4" and summary.loc[0.1, "target/round median"] == 6.5  # (4 + 9) / 2
    assert summary.loc[0.5, "reached"] == "2/4" and math.isinf(summary.loc[0.5, "target/round median"])  # half: never


@pytest.mark.parametrize("metric", ["target/round", "target/comm_f", "target/comm_g", "target/comm_total"])
def test_ranking_on_a_target_metric_puts_reached_seeds_first_then_the_median_then_the_budget_mean(tmp_path, metric):
    """0.1 is fastest where it reaches but reaches in 3/5; 0.2 and 0.3 reach in 4/5 with one median,
    0.3 slower on one seed and spending more where it fails; 0.4 never reaches: listed last, not dropped."""
    sweep = sweep_of(tmp_path, f"grid:\n  method.theta: [0.1, 0.2, 0.3, 0.4, 0.5]\nrepeats: 5\nmetric: {metric}\nmode: min\n")
    table = trials({
        0.4: {"round": [nan] * 5},
        0.1: {"round": [1, 1, 1, nan, nan]},
        0.3: {"round": [5, 5, 5, 9, nan], "budget": [20, 20, 20, 20, 90]},
        0.5: {"round": [8, 8, 8, 8, 8]},
        0.2: {"round": [5, 5, 5, 5, nan]},
    }, list(range(5)))  # fmt: skip
    summary = summarize(table, sweep)
    assert summary["method.theta"].tolist() == [0.5, 0.2, 0.3, 0.1, 0.4], summary[["method.theta", "reached"]]
    assert summary["reached"].tolist() == ["5/5", "4/5", "4/5", "3/5", "0/5"]


def test_configurations_tied_on_the_target_rank_by_their_final_accuracy(tmp_path):
    sweep = sweep_of(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 2\nmetric: target/comm_f\nmode: min\n")
    table = trials({0.1: {"round": [nan, nan]}, 0.5: {"round": [nan, nan]}}, [0, 1])
    table["accuracy/test"] = [0.2, 0.3, 0.6, 0.5]  # neither reaches the target; 0.5 gets closer
    assert summarize(table, sweep)["method.theta"].tolist() == [0.5, 0.1]


def test_a_target_metric_ranks_with_mode_min_and_needs_a_target(tmp_path):
    from fedsweep.core.errors import ConfigError
    from fedsweep.sweep.grid import expand

    for metric in ("target/comm_f", "target/comm_g", "target/comm_total", "target/round"):
        assert sweep_of(tmp_path, f"grid:\n  method.theta: [0.5]\nmetric: {metric}\nmode: min\n").metric == metric
    with pytest.raises(ConfigError, match=r"use mode: min, got mode='max'"):
        sweep_of(tmp_path, "grid:\n  method.theta: [0.5]\nmetric: target/comm_f\n")
    with pytest.raises(ConfigError, match="target_accuracy, which is null"):
        expand(sweep_of(tmp_path, "overrides: [target_accuracy=null]\ngrid:\n  method.theta: [0.5]\n"
                                  "metric: target/comm_total\nmode: min\n"))  # fmt: skip


def test_the_best_configuration_is_chosen_on_select_seeds_and_reported_on_report_seeds(tmp_path):
    """θ = 0.1 wins on seeds 0-1 and loses on seeds 2-3: it is chosen, and best.csv gives its
    numbers on seeds 2-3 only, with the seeds that chose and reported it."""
    sweep = sweep_of(tmp_path, GROUP + "repeats: 4\nselect_seeds: [0, 1]\nreport_seeds: [2, 3]\n"
                                       "metric: target/comm_g\nmode: min\n")  # fmt: skip
    table = trials({0.1: {"round": [1, 1, nan, 9]}, 0.5: {"round": [3, 3, 3, 3]}}, [0, 1, 2, 3])
    table = pd.concat([table.assign(method="vrcs"), trials({None: {"round": [5, 5, 5, 5]}}, [0, 1, 2, 3]).assign(method="fedavg")])
    table["method.lr"] = [None] * 8 + [0.1] * 4
    selection = summarize(table, sweep)  # summary.csv: the select seeds
    assert selection["seeds"].tolist() == [2, 2, 2] and selection["method.theta"].tolist()[0] == 0.1
    best = best_per_option(table, sweep)
    assert best["method"].tolist() == ["fedavg", "vrcs"]  # ranked on the report seeds: vrcs reached 1/2 there
    vrcs = best[best["method"] == "vrcs"].iloc[0]
    assert vrcs["method.theta"] == 0.1 and (vrcs["select_seeds"], vrcs["report_seeds"]) == ("0-1", "2-3")
    assert (vrcs["seeds"], vrcs["reached"]) == (2, "1/2") and math.isinf(vrcs["target/comm_g median"])
    assert vrcs["target/comm_g mean_at_budget"] == pytest.approx((20 + 9) / 2)  # seed 2 at its budget, seed 3 reached at 9
    assert vrcs["target/round mean_at_budget"] == pytest.approx((10 + 9) / 2)
    # the same file without the split chooses and reports on every seed, and says so
    same = best_per_option(table, sweep_of(tmp_path, GROUP + "repeats: 4\nmetric: target/comm_g\nmode: min\n"))
    assert set(same["select_seeds"]) == set(same["report_seeds"]) == {"0-3"}
    assert same[same["method"] == "vrcs"]["method.theta"].tolist() == [0.5]  # 4/4 beats 3/4 over all seeds
    # no config group: with select_seeds the one best configuration
    plain = sweep_of(tmp_path, "grid:\n  method.theta: [0.1, 0.5]\nrepeats: 4\nselect_seeds: 2\nmetric: target/comm_g\nmode: min\n")
    one = best_per_option(table[table["method"] == "vrcs"], plain)
    assert one["method.theta"].tolist() == [0.1] and one["reached"].tolist() == ["1/2"]


@pytest.mark.parametrize("text, message", [
    ("repeats: 4\nselect_seeds: [0, 1]\nreport_seeds: [1, 2, 3]\n", "seed 1 is in both select_seeds and report_seeds"),
    ("repeats: 4\nselect_seeds: [0, 5]\n", "select_seeds has seed 5, outside the repeats' seeds 0..3 (repeats=4)"),
    ("repeats: 4\nselect_seeds: [0]\nreport_seeds: [-1]\n", "report_seeds has seed -1, outside"),
    ("select_seeds: [0, 1]\n", "select_seeds=[0, 1] needs repeats: N"),
    ("repeats: 4\nreport_seeds: [2, 3]\n", "report_seeds=[2, 3] needs select_seeds"),
    ("search: random\nnum_samples: 2\nselect_seeds: 1\n", "select_seeds=1 needs search: grid"),
    ("repeats: 4\nselect_seeds: 4\n", "select_seeds=4 leaves no seed of repeats=4 to report on"),
    ("repeats: 4\nselect_seeds: [0, 1, 2, 3]\n", "leaves no seed of repeats=4 to report on"),
    ("repeats: 4\nselect_seeds: 0\n", "select_seeds must be a non-empty list of seeds, or a number n (the first n), got select_seeds=0"),
    ("repeats: 4\nselect_seeds: [0, 0]\n", "select_seeds lists seed 0 twice"),
    ("repeats: 4\nselect_seeds: 2\nreport_seeds: 3\n", "report_seeds must be a non-empty list of seeds, got report_seeds=3"),
    ("repeats: 4\nselect_seeds: [0]\nreport_seeds: [1, 2]\n", "seed 3 of repeats=4 is in neither select_seeds nor report_seeds"),
    ("repeats: 4\nselect_seeds: 2\ngrid:\n  method.p: {uniform: [0.2, 0.8]}\n", "grid.method.p is sampled anew for every seed"),
])  # fmt: skip
def test_a_bad_seed_split_stops_in_one_line(tmp_path, capsys, text, message):
    if "grid:" not in text:
        text = "grid:\n  method.theta: [0.5]\n" + text
    else:
        text = text.replace("grid:\n", "grid:\n  method.theta: [0.5]\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert tune_main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_sweep_selects_on_some_seeds_and_reports_on_fresh_ones_end_to_end(ray_session, tmp_path, capsys):
    """Digits, 2 rounds, sliding at two θ × 3 seeds: best.csv gives the θ chosen on seed 0, with
    censored statistics over seeds 1-2 only."""
    path = tmp_path / "split.yaml"
    path.write_text("name: split\noverrides: [runtime=local, rounds=2, target_accuracy=0.3, checkpoint.every=0]\n"
                    "grid:\n  method:\n    sliding: {theta: [0.05, 0.5]}\n"
                    "repeats: 3\nselect_seeds: [0]\nreport_seeds: [1, 2]\nmetric: target/comm_f\nmode: min\n")  # fmt: skip
    assert tune_main([str(path), "--results", str(tmp_path / "results")]) == 0
    out = tmp_path / "results" / "split"
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and (results["status"] == "done").all()
    assert {"target/comm_total", "budget/round", "budget/comm_f"} <= set(results)
    assert (results["budget/round"] == 2).all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["seeds"].tolist() == [1, 1] and summary["finished"].tolist() == [1, 1]  # chosen on seed 0 alone
    for _, row in summary.iterrows():  # the summary's statistics are over the selection seeds' rows
        chosen_rows = results[(results["method.theta"] == row["method.theta"]) & (results["seed"] == 0)]
        assert row["accuracy/test mean"] == pytest.approx(chosen_rows["accuracy/test"].mean())
    best = pd.read_csv(out / "best.csv")
    assert best["method"].tolist() == ["sliding"] and best["seeds"].tolist() == [2]
    assert best["select_seeds"].astype(str).tolist() == ["0"] and best["report_seeds"].tolist() == ["1-2"]
    for column in ("reached", "target/comm_f median", "target/comm_f mean_at_budget", "target/comm_f ci95_at_budget",
                   "target/round median", "target/comm_total mean_at_budget"):  # fmt: skip
        assert column in best, column
    assert best["reached"][0].endswith("/2")
    chosen = summary.iloc[0]["method.theta"]
    assert best["method.theta"][0] == chosen
    reported = results[(results["method.theta"] == chosen) & results["seed"].isin([1, 2])]
    at_budget = reported["target/comm_f"].fillna(reported["budget/comm_f"])
    assert best["target/comm_f mean_at_budget"][0] == pytest.approx(at_budget.mean())
    printed = capsys.readouterr().out
    assert "chosen on seeds 0, reported on seeds 1-2" in printed
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "accuracy_vs_comm_f.png").stat().st_size > 0
