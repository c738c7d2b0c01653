"""Statistics over seeds: a sweep's ``summary.csv`` and ``best.csv``.

With ``repeats`` every configuration (the grid without its seed) runs once per seed, and its
row of ``summary.csv`` counts every seed it ran:

- ``seeds``: the seeds run; ``finished``: those that ran all their rounds.
- The metric (unless a ``target/*`` one), the final test accuracy and communication counts
  ``accuracy/test``, ``comm/<group>``, ``comm/total``: ``<m> mean``, ``<m> std`` and ``<m> ci95`` (the
  half-width of a 95% confidence interval for the mean, Student's t with n − 1 degrees of
  freedom) over the finished seeds.
- With ``target_accuracy``, what it took to first reach it: ``target/round``,
  ``target/comm_<group>`` (``target/comm_f``, ``target/comm_g`` in VRCS's federation) and
  ``target/comm_total``. A seed that never reached the target has
  no value: it is *censored* (it would have needed more than it was given), never dropped.

  ``reached``
      the seeds that reached the target out of all of them, e.g. ``3/5``.
  ``<t> median``
      the median over all seeds, a never-reached seed counted as +∞: ``never`` unless more
      than half the seeds reached the target.
  ``<t> mean_at_budget``, ``<t> ci95_at_budget``
      the mean over all seeds with a never-reached seed counted at its budget, and the
      half-width of its 95% CI (Student's t). The budget is the trial's ``budget/*`` column of
      ``results.csv``: the run's ``rounds`` for ``target/round``; for ``target/comm_*`` the
      run's final communication count (``comm/<group>``, ``comm/total`` at its last
      reported round), what it spent without reaching the target. So with any never-reached
      seed the mean is a lower bound of what reaching the target costs on average; blank
      when a never-reached seed reported no count (it diverged in its first round).

Configurations are ranked by the sweep's metric: for a ``target/*`` metric (``mode: min``) by
the fraction of seeds that reached the target (more first), then the median, then
``mean_at_budget``, and among configurations tied on all three (e.g. none reached the target)
the higher mean final ``accuracy/test``; otherwise by the metric's mean.

``best.csv``, with a grid over a config group (``method``): each option's best configuration,
the first of its rows in that ranking; with ``select_seeds``, also without a group: the best
configuration. Its columns ``select_seeds`` and ``report_seeds`` say which seeds chose it and
which seeds its numbers come from. With ``select_seeds`` the ranking uses the select seeds
only, ``summary.csv`` is over them, and ``best.csv`` gives the chosen configurations' numbers
over the report seeds only (fresh seeds: no selection bias). Without it both are all seeds:
chosen and reported on the same seeds, an optimistic estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsweep.sweep.grid import folded_keys

if TYPE_CHECKING:
    from fedsweep.sweep.sweep_file import Sweep

NEVER = "never"  # how an infinite median (at most half the seeds reached the target) is written


def is_target(metric: str) -> bool:
    """``target/*``: what it took to first reach ``target_accuracy`` (the round, the contacts with
    each group and in all, the bytes)."""
    return metric.startswith("target/")


def budget_of(target: str) -> str:
    """The trial table's column a seed that never reached the target counts as: ``budget/round``
    for ``target/round``, ``budget/comm_<a>`` for ``target/comm_<a>``, ``budget/bytes``."""
    return "budget/" + target.removeprefix("target/")


def summarized_targets(table: pd.DataFrame) -> list[str]:
    """The target metrics a table has, the round first, bytes left out."""
    found = [c for c in table.columns if is_target(c) and c != "target/bytes"]
    return sorted(found, key=lambda c: (c != "target/round", c))


def means_of(table: pd.DataFrame) -> list[str]:
    """Beside the metric, mean ± CI over the finished seeds: the final test accuracy and every
    communication counter."""
    return ["accuracy/test", *sorted(c for c in table.columns if c.startswith("comm/") and c != "comm/total"), "comm/total"]


@dataclass(frozen=True)
class Censored:
    """Censored statistics of one target metric over a configuration's seeds."""

    seeds: int
    reached: int
    median: float  # +inf: never (at most half the seeds reached the target)
    mean_at_budget: float  # never-reached seeds at their budget
    ci95_at_budget: float  # half-width, Student's t with seeds − 1 degrees of freedom


def censored(values: Iterable[float], budgets: Iterable[float]) -> Censored:
    """``values``: each seed's target metric, NaN where it never reached the target;
    ``budgets``: each seed's budget, what a never-reached seed counts as in the mean."""
    values, budgets = np.asarray(list(values), dtype=float), np.asarray(list(budgets), dtype=float)
    if not len(values):
        return Censored(0, 0, math.nan, math.nan, math.nan)
    hit = ~np.isnan(values)
    at_budget = np.where(hit, values, budgets)
    mean, _, half = mean_ci(at_budget)
    return Censored(len(values), int(hit.sum()), float(np.median(np.where(hit, values, np.inf))), mean, half)


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation and 95% CI half-width (Student's t) of ``values``; NaN in any
    value makes all three NaN (an unknown value is not skipped)."""
    from scipy.stats import t as student_t

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    half = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), std, half


def config_keys(sweep: Sweep) -> list[str]:
    return [k for k in sweep.columns if k != "seed"]


def _plain(value: Any) -> Any:
    """A grid value as a comparable key: blanks (None, NaN) alike, numbers as floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    return value


def configuration(row: Any, keys: Sequence[str]) -> tuple:
    """The configuration a trial (or summary) row belongs to: its grid values without the seed."""
    return tuple(_plain(row[k]) for k in keys)


def summarize(table: pd.DataFrame, sweep: Sweep, seeds: Iterable[int] | None = None) -> pd.DataFrame | None:
    """Per configuration, over its trials with a seed in ``seeds`` (default: the select seeds,
    every seed without ``select_seeds``): the columns of the module's docstring, ranked. None
    without ``repeats``."""
    if sweep.repeats <= 1 or table.empty:
        return None
    seeds = sweep.seed_split[0] if seeds is None else tuple(seeds)
    table = table[table["seed"].isin(seeds)]
    keys = config_keys(sweep)
    targets = [t for t in dict.fromkeys((*summarized_targets(table), sweep.metric)) if is_target(t) and t in table]
    means = [m for m in dict.fromkeys((sweep.metric, *means_of(table))) if not is_target(m) and m in table and m != "round"]
    groups: dict[tuple, list[int]] = {}
    for position, (_, row) in enumerate(table.iterrows()):
        groups.setdefault(configuration(row, keys), []).append(position)
    rows = []
    for members in groups.values():
        frame = table.iloc[members]
        done = frame[frame["status"] == "done"]
        row = {k: frame[k].iloc[0] for k in keys}
        row.update({"seeds": len(frame), "finished": len(done)})
        for metric in means:
            mean, std, half = mean_ci(done[metric].dropna())
            row.update({f"{metric} mean": mean, f"{metric} std": std, f"{metric} ci95": half})
        for metric in targets:
            budget = budget_of(metric)
            stats = censored(frame[metric], frame[budget] if budget in frame else [math.nan] * len(frame))
            row.setdefault("reached", f"{stats.reached}/{stats.seeds}")
            row.update({f"{metric} median": stats.median, f"{metric} mean_at_budget": stats.mean_at_budget,
                        f"{metric} ci95_at_budget": stats.ci95_at_budget})  # fmt: skip
        rows.append(row)
    summary = pd.DataFrame(rows)
    first = [c for c in (*keys, "seeds", "finished", "reached") if c in summary]
    return rank(summary[first + [c for c in summary if c not in first]], sweep)


def reached_fraction(summary: pd.DataFrame) -> pd.Series:
    """The ``reached`` column ("3/5") as fractions (0 for a row with no seeds)."""
    def fraction(text: Any) -> float:
        if not isinstance(text, str):
            return 0.0
        hit, total = (int(part) for part in text.split("/"))
        return hit / total if total else 0.0

    return summary["reached"].map(fraction).astype(float)


def rank(summary: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """``summary`` best first by the sweep's metric (a stable sort: ties keep the grid's order)."""
    metric = sweep.metric
    if is_target(metric):
        order = [("_reached", False), (f"{metric} median", True), (f"{metric} mean_at_budget", True),
                 ("accuracy/test mean", False)]  # the last: ties, e.g. no seed reached the target
        summary = summary.assign(_reached=reached_fraction(summary)) if "reached" in summary else summary
    else:
        order = [(f"{metric} mean", sweep.mode == "min")]
    order = [(column, ascending) for column, ascending in order if column in summary]
    if order:
        summary = summary.sort_values([c for c, _ in order], ascending=[a for _, a in order], na_position="last",
                                      kind="stable")  # fmt: skip
    return summary.drop(columns="_reached", errors="ignore").reset_index(drop=True)


def seed_text(seeds: Iterable[int]) -> str:
    """``0-4`` for seeds 0..4, ``0,2,5-7`` otherwise: runs of consecutive seeds as ranges."""
    parts: list[list[int]] = []
    for seed in sorted(seeds):
        if parts and seed == parts[-1][-1] + 1:
            parts[-1].append(seed)
        else:
            parts.append([seed])
    return ",".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in parts)


def best_per_option(table: pd.DataFrame, sweep: Sweep) -> pd.DataFrame | None:
    """``best.csv``: each option's best configuration (a grid over a config group), or with
    ``select_seeds`` the best one overall without a group; chosen by :func:`summarize` on the
    select seeds, its numbers over the report seeds. None when there is nothing to choose."""
    select, report = sweep.seed_split
    group = next(iter(folded_keys(sweep.grid)), None)  # the grid's first config group
    chosen = summarize(table, sweep, select)
    if chosen is None or chosen.empty or (group is None and not sweep.select_seeds):
        return None
    chosen = chosen.groupby(group, sort=False, dropna=False).head(1) if group in chosen else chosen.head(1)
    if sweep.select_seeds:  # the chosen configurations again, on the report seeds only
        keys = config_keys(sweep)
        wanted = {configuration(row, keys) for _, row in chosen.iterrows()}
        trials = table[[configuration(row, keys) in wanted for _, row in table.iterrows()]]
        reported = summarize(trials, sweep, report) if len(trials) else chosen.iloc[:0]
        missing = wanted - {configuration(row, keys) for _, row in reported.iterrows()}
        if missing:  # a chosen configuration none of whose report seeds ran yet (a stopped sweep)
            blank = [{**{k: row[k] for k in keys}, "seeds": 0, "finished": 0}
                     for _, row in chosen.iterrows() if configuration(row, keys) in missing]  # fmt: skip
            reported = rank(pd.concat([reported, pd.DataFrame(blank)], ignore_index=True), sweep)
        chosen = reported
    at = len(config_keys(sweep))
    chosen = chosen.reset_index(drop=True)
    chosen.insert(at, "report_seeds", seed_text(report))
    chosen.insert(at, "select_seeds", seed_text(select))
    return chosen


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as written to CSV: an infinite median as ``never``."""
    out = frame.copy()
    for column in [c for c in out if c.endswith(" median")]:
        out[column] = out[column].map(lambda v: NEVER if isinstance(v, float) and math.isinf(v) else v).astype(object)
    return out


def printable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` compact for the terminal, one column per metric: ``mean ± ci95``, and for a
    target metric ``median; mean_at_budget ± ci95`` (the standard deviations are in the CSV)."""
    def number(value: Any) -> str:
        if isinstance(value, float) and math.isinf(value):
            return NEVER
        return "" if _plain(value) is None else f"{value:.4g}"

    def with_ci(mean: Any, half: Any) -> str:
        return number(mean) + (f" ± {number(half)}" if _plain(half) is not None else "")

    stats = [c for c in frame if c.endswith((" mean", " std", " ci95", " median", " mean_at_budget", " ci95_at_budget"))]
    out = frame.drop(columns=stats)
    for column in stats:
        metric, _, kind = column.rpartition(" ")
        if kind == "mean":
            out[f"{metric} mean ± ci95"] = [with_ci(m, h) for m, h in zip(frame[column], frame[f"{metric} ci95"])]
        elif kind == "median":
            at_budget = zip(frame[column], frame[f"{metric} mean_at_budget"], frame[f"{metric} ci95_at_budget"])
            out[f"{metric} median; at budget ± ci95"] = [f"{number(m)}; {with_ci(b, h)}" for m, b, h in at_budget]
    return out
