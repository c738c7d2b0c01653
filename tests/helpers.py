"""What many tests do: run a composed config and keep its reports, read a TensorBoard run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def history(overrides: Sequence[str], log_dir: str | Path, **kwargs) -> list[dict[str, float]]:
    """Every round's metrics of ``run_experiment`` on the config ``overrides`` compose to."""
    from fedsweep.experiment.config import compose
    from fedsweep.experiment.loop import run_experiment

    rounds: list[dict[str, float]] = []
    run_experiment(compose(list(overrides)), log_dir=log_dir, report=rounds.append, progress=False, **kwargs)
    return rounds


def scalars(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every event of ``tag`` in the TensorBoard run ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def tags(log_dir: str | Path) -> list[str]:
    """The scalar tags of the TensorBoard run ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events.Tags()["scalars"]
