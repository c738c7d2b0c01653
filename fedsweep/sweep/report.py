"""The sweep's table and plots, from Ray Tune's ``ResultGrid``.

``results.csv`` has a row per trial, best first by the sweep's metric (blank, e.g. a target
never reached, last). With ``target_accuracy`` a row has what it took to first reach it,
``target/round``, ``target/comm_<group>`` and ``target/comm_total``, blank when the trial never
did, and the budget such a trial counts as in the censored statistics: ``budget/round`` (the
run's ``rounds``) and ``budget/comm_*`` (its final communication counts).

With ``repeats`` (seeds as an axis) the sweep also writes ``summary.csv`` and ``best.csv``
(:mod:`fedsweep.sweep.summary`: censored statistics for the ``target/*`` metrics, mean and
95% CI for the others, ``select_seeds``/``report_seeds``); the round plot draws each
configuration's mean curve with its 95% CI as a band, labelled with its seed count and the
seeds that reached the target, and, when ``best.csv`` exists, only its configurations over
its report seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsweep.sweep.grid import label
from fedsweep.sweep.summary import (best_per_option, budget_of, config_keys, configuration, is_target, readable,
                                    seed_text, summarize)  # fmt: skip
from fedsweep.sweep.sweep_file import Sweep

FINAL = ("accuracy/test", "loss/test", "accuracy/server")  # then every comm/<group>, comm/total and the round


def final_columns(metrics: dict) -> list[str]:
    """The columns a trial's row shows from its chosen result."""
    comm = sorted(k for k in metrics if k.startswith("comm/") and k.count("/") == 1 and k not in COUNTERS)
    return [*FINAL, *comm, "round"]


COUNTERS = ("comm/messages", "comm/bytes_sent", "comm/bytes_received")


def budget_counters(budget: str) -> tuple[str, ...]:
    """The counters whose final values a budget column adds (``budget/round``: the run's rounds)."""
    if budget == "budget/bytes":
        return ("comm/bytes_sent", "comm/bytes_received")
    return ("comm/" + budget.removeprefix("budget/comm_"),)


def status(metrics: dict, rounds: int, *, error: bool = False) -> str:
    """A trial's state from its last result: ``done``; ``stopped early at r`` (the scheduler
    stopped it: Tune marks that result done); ``diverged at r``; ``error`` (the trial crashed, or
    reported fedsweep's one-line error: ``failed/reason``); or ``unfinished at
    r/R`` (the sweep was stopped: a resume continues it)."""
    if error or metrics.get("failed"):  # a Tune failure, or a one-line error the trial reported
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
    if sweep.rank == "best" and not is_target(sweep.metric):  # a target/* value is the same at every round once reached
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


def target_columns(history: pd.DataFrame | None, last: dict, rounds: int, names: tuple[str, ...]) -> dict[str, float]:
    """A trial's ``target/*`` values as its tracker recorded them at the first round that reached
    the target (NaN: never reached), then each one's budget: ``budget/round`` is ``rounds``,
    ``budget/comm_*`` the last count the trial reported (NaN if none)."""
    frame = history if history is not None and len(history) else pd.DataFrame([last])
    reached = frame[frame["target/round"].notna()] if "target/round" in frame else frame.iloc[:0]
    record = reached.iloc[0].to_dict() if len(reached) else {}
    out = {}
    for name in names:
        out[name] = float(record.get(name, math.nan))
    for name in names:
        budget = budget_of(name)
        out[budget] = float(rounds) if name == "target/round" else float(sum(_last(frame, c) for c in budget_counters(budget)))
    return out


def _last(frame: pd.DataFrame, column: str) -> float:
    values = frame[column].dropna() if column in frame else ()
    return float(values.iloc[-1]) if len(values) else math.nan


def write_report(results, sweep: Sweep, out_dir: Path) -> pd.DataFrame:
    """Write ``results.csv``, ``accuracy.png`` and ``accuracy_vs_comm.png`` to ``out_dir`` (and
    with ``repeats`` ``summary.csv``, ``best.csv`` and the per-group communication plots).

    Returns the table, best first by the sweep's metric (at each trial's last round, or its
    best with ``rank: best``; the ``round`` column says which), the summary and best tables in
    its ``attrs``. Trials that never started (a stopped sweep) are left out; a resumed sweep
    runs them.
    """
    rows, histories, targets, reasons = [], [], set(), []
    chosen_rows = trial_rows(results, sweep)
    for result in results:
        if not result.config:
            continue
        row = {key: label(result.config, key) for key in sweep.columns}
        metrics = result.metrics or {}
        chosen = chosen_rows.get(metrics.get("trial_id"), metrics)
        row.update({name: chosen.get(name) for name in final_columns(chosen)})
        history = result.metrics_dataframe
        if result.config.get("target_accuracy") is not None:
            targets.add(result.config["target_accuracy"])
            wanted = sorted(k for k in metrics if is_target(k) and k != "target/bytes")
            wanted += [sweep.metric] if is_target(sweep.metric) and sweep.metric not in wanted else []
            row.update(target_columns(history, metrics, result.config["rounds"], tuple(wanted)))
        if result.config.get("similarity", {}).get("estimate"):
            row.update({name: chosen.get(name) for name in chosen if name.startswith("similarity/")})
        row["status"] = status(metrics, result.config["rounds"], error=result.error is not None)
        if result.error is None and metrics.get("failed/reason"):
            reasons.append(str(metrics["failed/reason"]).removeprefix("error: "))
        rows.append(row)
        if history is not None and "accuracy/test" in history:
            histories.append((row, history))
    table = pd.DataFrame(rows)
    if sweep.metric in table:  # diverged trials are listed, not ranked: last, whatever they reached before
        ranked = table["status"].str.startswith("diverged")
        table = table.assign(_last=ranked).sort_values(
            ["_last", sweep.metric], ascending=[True, sweep.mode == "min"], na_position="last", kind="stable"
        ).drop(columns="_last")
    table.attrs["reasons"] = reasons  # the one-line errors trials reported (they did not crash)
    table.to_csv(out_dir / "results.csv", index=False)
    summary = summarize(table, sweep)
    if summary is not None:
        readable(summary).to_csv(out_dir / "summary.csv", index=False)
        table.attrs["summary"] = summary
        best = best_per_option(table, sweep)
        if best is not None:
            readable(best).to_csv(out_dir / "best.csv", index=False)
            table.attrs["best"] = best
    if histories:
        _plots(histories, table.attrs.get("best"), sweep, out_dir, target=next(iter(targets)) if len(targets) == 1 else None)
    return table


def _legend(row: dict, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys if not _missing(row[k]))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plots(histories: list[tuple[dict, pd.DataFrame]], best: pd.DataFrame | None, sweep: Sweep, out_dir: Path, *,
           target: float | None) -> None:  # fmt: skip
    """Every trial's curve against rounds and total communications; with ``repeats`` the round
    and per-group plots draw a band per configuration instead: ``best.csv``'s over its report
    seeds when there is one, else every configuration's over the select seeds."""
    curves = {_legend(row, sweep.columns): history for row, history in histories}
    bands, title = None, None
    if sweep.repeats > 1:
        keys = config_keys(sweep)
        select, report = sweep.seed_split
        chosen = [configuration(r, keys) for _, r in best.iterrows()] if best is not None else None
        seeds = report if best is not None else select
        grouped: dict[tuple, tuple[dict, list[dict], list[pd.DataFrame]]] = {}
        for row, history in histories:
            config = configuration(row, keys)
            if row["seed"] in seeds and (chosen is None or config in chosen):
                grouped.setdefault(config, (row, [], []))[1].append(row)
                grouped[config][2].append(history)
        order = chosen if chosen is not None else list(grouped)
        bands = {}
        for config in (c for c in order if c in grouped):
            row, members, frames = grouped[config]
            reached = [m for m in members if not _missing(m.get("target/round", math.nan))]
            extra = f", reached {len(reached)}/{len(members)}" if "target/round" in row else ""
            bands[f"{_legend(row, keys)} (n={len(frames)}{extra})"] = frames
        if best is not None:
            shown = f"shown on seeds {seed_text(report)}" if sweep.select_seeds else "and shown on the same seeds"
            title = f"each option's best: chosen on seeds {seed_text(select)}, {shown}"
    _plot(curves, "round", "round", out_dir / "accuracy.png", bands=bands, target=target, title=title)
    _plot(curves, "comm/total", "communications (all groups)", out_dir / "accuracy_vs_comm.png", target=target)
    groups = sorted({c.removeprefix("comm/") for _, h in histories for c in h.columns
                     if c.startswith("comm/") and c.count("/") == 1 and c not in (*COUNTERS, "comm/total")})  # fmt: skip
    if bands and len(groups) > 1:  # per communication of each group, the mean over seeds with its band
        for axis in groups:
            _plot(curves, f"comm/{axis}", f"communications with group {axis}", out_dir / f"accuracy_vs_comm_{axis}.png",
                  bands=bands, target=target, title=title)  # fmt: skip


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


def _plot(curves: dict[str, pd.DataFrame], x: str, xlabel: str, path: Path, *, bands: dict[str, list[pd.DataFrame]] | None = None,
          target: float | None = None, title: str | None = None) -> None:  # fmt: skip
    """Test accuracy against ``x``: each curve, or with ``bands`` each band's mean over its seeds
    with its 95% CI (Student's t); a dotted line at the target accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if bands:
        from scipy.stats import t as student_t

        for legend, frames in bands.items():
            stacked = _aligned([f for f in frames if x in f], x)
            n = stacked.notna().sum(axis=1)
            mean, std = stacked.mean(axis=1), stacked.std(axis=1, ddof=1)
            half = student_t.ppf(0.975, (n - 1).clip(lower=1)) * std / n.clip(lower=1) ** 0.5
            ax.plot(mean.index, mean, label=legend, marker=".", markersize=3)
            ax.fill_between(mean.index, (mean - half).clip(0, 1), (mean + half).clip(0, 1), alpha=0.2)
    else:
        for legend, df in curves.items():
            if x in df:
                ax.plot(df[x], df["accuracy/test"], label=legend, marker=".", markersize=3)
    if target is not None:
        ax.axhline(target, linestyle=":", color="grey", label=f"target {target:g}")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
