"""The sweep's table and plots, from Ray Tune's ``ResultGrid``."""

from __future__ import annotations

from pathlib import Path
import pandas as pd

from fedsweep.sweep import Sweep, label

FINAL = ("accuracy/test", "loss/test", "accuracy/server", "comm/f", "comm/g", "round")
TARGET = ("target/round", "target/comm_f", "target/comm_g")


def write_report(results, sweep: Sweep, out_dir: Path) -> pd.DataFrame:
    """Write ``results.csv`` and ``accuracy.png`` to ``out_dir``; return the table (best first)."""
    rows, curves = [], {}
    for result in results:
        row = {key: label(result.config, key) for key in sweep.grid}
        metrics = result.metrics or {}
        row.update({name: metrics.get(name) for name in FINAL + TARGET if name in metrics or name in FINAL})
        row["status"] = "error" if result.error else "done"
        rows.append(row)
        history = result.metrics_dataframe
        if history is not None and "accuracy/test" in history:
            legend = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in sweep.grid)
            curves[legend] = history[["round", "accuracy/test"]]
    table = pd.DataFrame(rows)
    if sweep.metric in table:
        table = table.sort_values(sweep.metric, ascending=sweep.mode == "min", na_position="last")
    table.to_csv(out_dir / "results.csv", index=False)
    if curves:
        _plot(curves, out_dir / "accuracy.png")
    return table


def _plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, df in curves.items():
        ax.plot(df["round"], df["accuracy/test"], label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
