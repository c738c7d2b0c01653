"""The sweep's table and plots, from Ray Tune's ``ResultGrid``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsweep.sweep import Sweep, label

FINAL = ("accuracy/test", "loss/test", "accuracy/server", "comm/f", "comm/g", "round")
TARGET = ("target/round", "target/comm_f", "target/comm_g")
SIMILARITY = ("similarity/delta_f", "similarity/delta_g")


def _status(result) -> str:
    if result.error:
        return "error"
    if (result.metrics or {}).get("diverged"):
        return f"diverged at {int(result.metrics['round'])}"
    rounds = result.config["rounds"]
    done = (result.metrics or {}).get("round", 0)
    return "done" if done >= rounds else f"stopped at {int(done)}/{rounds}"


def write_report(results, sweep: Sweep, out_dir: Path) -> pd.DataFrame:
    """Write ``results.csv``, ``accuracy.png`` and ``accuracy_vs_comm.png`` to ``out_dir``.

    Returns the table, best first by the sweep's metric. Trials that never
    started (a stopped sweep) are left out; a resumed sweep runs them.
    """
    rows, curves = [], {}
    for result in results:
        if not result.config:
            continue
        row = {key: label(result.config, key) for key in sweep.grid}
        metrics = result.metrics or {}
        columns = FINAL + (TARGET if result.config.get("target_accuracy") is not None else ())
        columns += SIMILARITY if result.config.get("similarity", {}).get("estimate") else ()
        row.update({name: metrics.get(name) for name in columns})
        row["status"] = _status(result)
        rows.append(row)
        history = result.metrics_dataframe
        if history is not None and "accuracy/test" in history:
            legend = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in sweep.grid)
            curves[legend] = history
    table = pd.DataFrame(rows)
    if sweep.metric in table:  # diverged trials are listed, not ranked: last, whatever they reached before
        ranked = table["status"].str.startswith("diverged")
        table = table.assign(_last=ranked).sort_values(
            ["_last", sweep.metric], ascending=[True, sweep.mode == "min"], na_position="last"
        ).drop(columns="_last")
    table.to_csv(out_dir / "results.csv", index=False)
    if curves:
        _plot(curves, "round", "round", out_dir / "accuracy.png")
        _plot(curves, "comm/total", "communications (f + g)", out_dir / "accuracy_vs_comm.png")
    return table


def _plot(curves: dict[str, pd.DataFrame], x: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
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
