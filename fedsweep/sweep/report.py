"""The sweep's table and plots, from Ray Tune's ``ResultGrid``.

With ``repeats`` (seeds as an axis) the sweep also writes ``summary.csv``: per
configuration, the seeds that finished and, for the metric and the communication counts,
the mean, the standard deviation and the half-width of a 95% confidence interval for the
mean (Student's t with n − 1 degrees of freedom); the round plot draws each
configuration's mean curve with that interval as a band.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsweep.sweep.sweep_file import Sweep
from fedsweep.sweep.grid import folded_keys, label

FINAL = ("accuracy/test", "loss/test", "accuracy/server", "comm/f", "comm/g", "round")
TARGET = ("target/round", "target/comm_f", "target/comm_g")
SIMILARITY = ("similarity/delta_f", "similarity/delta_g")


def status(metrics: dict, rounds: int, *, error: bool = False) -> str:
    """A trial's state from its last result: ``done``; ``stopped early at r`` (the scheduler
    stopped it: Tune marks that result done); ``diverged at r``; ``error``; or ``unfinished at
    r/R`` (the sweep was stopped: a resume continues it)."""
    if error:
        return "error"
    if metrics.get("diverged"):
        return f"diverged at {int(metrics['round'])}"
    reached = metrics.get("round", 0)
    if reached >= rounds:
        return "done"
    if metrics.get("done"):
        return f"stopped early at {int(reached)}"
    return f"unfinished at {int(reached)}/{rounds}"


def trial_rows(results, sweep: Sweep) -> dict[str, dict]:
    """Each trial's row of Tune's own table (``ResultGrid.get_dataframe``), by trial id: its last
    result, or with ``rank: best`` the result of its best round by the sweep's metric."""
    if sweep.rank == "best":
        try:
            frame = results.get_dataframe(filter_metric=sweep.metric, filter_mode=sweep.mode)
        except ValueError:  # pandas 3's idxmax raises for a trial whose metric is all NaN (diverged at 1)
            return _best_rows(results, sweep)
    else:
        frame = results.get_dataframe()
    if "trial_id" not in frame:
        return {}
    return {row["trial_id"]: row for row in frame.to_dict("records")}


def _best_rows(results, sweep: Sweep) -> dict[str, dict]:
    """What ``get_dataframe(filter_metric=…)`` gives, per trial from its history, skipping
    trials with no finite value of the metric."""
    rows = {}
    for result in results:
        history = result.metrics_dataframe
        if history is None or sweep.metric not in history or history[sweep.metric].isna().all():
            continue
        best = history[sweep.metric].idxmax() if sweep.mode == "max" else history[sweep.metric].idxmin()
        row = history.loc[best].to_dict()
        rows[row["trial_id"]] = row
    return rows


def write_report(results, sweep: Sweep, out_dir: Path) -> pd.DataFrame:
    """Write ``results.csv``, ``accuracy.png`` and ``accuracy_vs_comm.png`` to ``out_dir``.

    Returns the table, best first by the sweep's metric (at each trial's last round, or its
    best with ``rank: best``; the ``round`` column says which). Trials that never started (a
    stopped sweep) are left out; a resumed sweep runs them.
    """
    rows, curves = [], {}
    chosen_rows = trial_rows(results, sweep)
    for result in results:
        if not result.config:
            continue
        row = {key: label(result.config, key) for key in sweep.columns}
        metrics = result.metrics or {}
        chosen = chosen_rows.get(metrics.get("trial_id"), metrics)
        columns = FINAL + (TARGET if result.config.get("target_accuracy") is not None else ())
        columns += SIMILARITY if result.config.get("similarity", {}).get("estimate") else ()
        row.update({name: chosen.get(name) for name in columns})
        row["status"] = status(metrics, result.config["rounds"], error=result.error is not None)
        rows.append(row)
        history = result.metrics_dataframe
        if history is not None and "accuracy/test" in history:
            legend = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in sweep.columns if row[k] is not None)
            curves[legend] = history
    table = pd.DataFrame(rows)
    if sweep.metric in table:  # diverged trials are listed, not ranked: last, whatever they reached before
        ranked = table["status"].str.startswith("diverged")
        table = table.assign(_last=ranked).sort_values(
            ["_last", sweep.metric], ascending=[True, sweep.mode == "min"], na_position="last"
        ).drop(columns="_last")
    table.to_csv(out_dir / "results.csv", index=False)
    summary = summarize(table, sweep)
    if summary is not None:
        summary.to_csv(out_dir / "summary.csv", index=False)
        table.attrs["summary"] = summary
        best = best_per_option(summary, sweep)
        if best is not None:
            best.to_csv(out_dir / "best.csv", index=False)
            table.attrs["best"] = best
    if curves:
        by_config = _by_configuration(curves) if sweep.repeats > 1 else None
        if by_config and "best" in table.attrs:  # a tuned comparison: each option at its best
            chosen = _legends_of(table.attrs["best"], rows, sweep)
            by_config = {legend: by_config[legend] for legend in chosen if legend in by_config}
        _plot(curves, "round", "round", out_dir / "accuracy.png", bands=by_config)
        _plot(curves, "comm/total", "communications (f + g)", out_dir / "accuracy_vs_comm.png")
        if by_config:  # per communication of each group, the mean over seeds with its band
            for axis in ("f", "g"):
                _plot(curves, f"comm/{axis}", f"communications with group {axis}", out_dir / f"accuracy_vs_comm_{axis}.png",
                      bands=by_config)  # fmt: skip
    return table


SUMMARIZED = ("comm/f", "comm/g", "target/round", "target/comm_f", "target/comm_g")


def summarize(table: pd.DataFrame, sweep: Sweep) -> pd.DataFrame | None:
    """Per configuration (the grid without its seed): the seeds run and finished, and the mean,
    standard deviation and 95% CI half-width of the metric and the communication counts over
    the finished ones. None without ``repeats``."""
    if sweep.repeats <= 1 or table.empty:
        return None
    from scipy.stats import t as student_t

    keys = [k for k in sweep.columns if k != "seed"]
    columns = [c for c in (sweep.metric, *SUMMARIZED) if c in table and c != "round"]
    grouped = table.groupby(keys, sort=False, dropna=False) if keys else [((), table)]
    rows = []
    for key, frame in grouped:
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        done = frame[frame["status"] == "done"]
        row.update({"seeds": len(frame), "finished": len(done)})
        if "target/round" in done:  # the seeds that reached the target: the target/* means are over them
            row["reached target"] = int(done["target/round"].notna().sum())
        for column in columns:
            values = done[column].dropna().astype(float)
            n = len(values)
            std = float(values.std(ddof=1)) if n > 1 else math.nan
            row[f"{column} mean"] = float(values.mean()) if n else math.nan
            row[f"{column} std"] = std
            row[f"{column} ci95"] = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    order, ascending = [f"{sweep.metric} mean"], [sweep.mode == "min"]
    if sweep.metric.startswith("target/") and "reached target" in summary:  # more seeds reaching it first
        order, ascending = ["reached target", *order], [False, *ascending]
    return summary.sort_values(order, ascending=ascending, na_position="last").reset_index(drop=True)


def best_per_option(summary: pd.DataFrame | None, sweep: Sweep) -> pd.DataFrame | None:
    """With a grid over a config group (``method``): each option's best configuration, the
    summary's first row for it (a tuned comparison: every method at its best settings)."""
    if summary is None or summary.empty:
        return None
    group = next(iter(folded_keys(sweep.grid)), None)  # the grid's first config group
    if group is None or group not in summary:
        return None
    return summary.groupby(group, sort=False, dropna=False).head(1).reset_index(drop=True)


def _legends_of(chosen: pd.DataFrame, rows: list[dict], sweep: Sweep) -> list[str]:
    """The plot legends (keys that apply, seed left out) of the summary rows ``chosen``, written
    as the trials' own rows write them (pandas turns a column of ints with blanks into floats)."""
    keys = [k for k in sweep.columns if k != "seed"]
    legends = []
    for _, summary_row in chosen.iterrows():
        trial = next((r for r in rows if all(_same(r[k], summary_row[k]) for k in keys)), None)
        if trial is not None:
            legends.append(", ".join(f"{k.split('.')[-1]}={trial[k]}" for k in keys if not _missing(trial[k])))
    return legends


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a, b) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _aligned(frames: list[pd.DataFrame], x: str) -> pd.DataFrame:
    """Each seed's test accuracy as a step function of ``x`` (its value after the last round whose
    ``x`` is at most the point), on the union of the seeds' ``x`` values, blank past a seed's
    last one: seeds with different communication counts per round (VRCS's random local steps)
    are averaged at equal communication."""
    series = [f[[x, "accuracy/test"]].dropna().drop_duplicates(x, keep="last").set_index(x)["accuracy/test"] for f in frames]
    points = sorted(set().union(*(s.index for s in series)))
    columns = []
    for s in series:
        column = s.reindex(points).ffill()
        column[column.index > s.index.max()] = math.nan
        columns.append(column)
    return pd.concat(columns, axis=1)


def _by_configuration(curves: dict[str, pd.DataFrame]) -> dict[str, list[pd.DataFrame]]:
    """Curves grouped by their legend without the seed."""
    out: dict[str, list[pd.DataFrame]] = {}
    for legend, df in curves.items():
        config = ", ".join(part for part in legend.split(", ") if not part.startswith("seed="))
        out.setdefault(config, []).append(df)
    return out


def _plot(
    curves: dict[str, pd.DataFrame], x: str, xlabel: str, path: Path, *, bands: dict[str, list[pd.DataFrame]] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if bands:  # the mean over seeds per round, with its 95% confidence interval
        from scipy.stats import t as student_t

        for legend, frames in bands.items():
            stacked = _aligned([f for f in frames if x in f], x)
            n = stacked.notna().sum(axis=1)
            mean, std = stacked.mean(axis=1), stacked.std(axis=1, ddof=1)
            half = student_t.ppf(0.975, (n - 1).clip(lower=1)) * std / n.clip(lower=1) ** 0.5
            ax.plot(mean.index, mean, label=f"{legend} (n={int(n.max())})", marker=".", markersize=3)
            ax.fill_between(mean.index, (mean - half).clip(0, 1), (mean + half).clip(0, 1), alpha=0.2)
    else:
        for legend, df in curves.items():
            if x in df:
                ax.plot(df[x], df["accuracy/test"], label=legend, marker=".", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
