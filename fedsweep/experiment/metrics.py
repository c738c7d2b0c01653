"""Per-round metrics to TensorBoard, also indexed by communication, the target tracker, and a
sweep trial's hyperparameters for TensorBoard's HParams dashboard."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedsweep.core.disk import cause, writing


REPORTED = (  # every metric a run may report besides the per-group ones (tests/test_experiment.py checks)
    "round", "accuracy/test", "loss/test", "accuracy/server", "loss/server",
    "comm/total", "comm/messages", "comm/bytes_sent", "comm/bytes_received",
    "norm/extragrad/full", "norm/update", "norm/control", "norm/h", "norm/pseudo_gradient", "norm/mapping",
    "norm/z-y", "norm/grad", "norm/grad_p", "tau_eff", "loss/argmin", "argmin/steps", "argmin/residual",
    "inner/steps", "inner/residual", "local_steps", "clients/local",
    "target/round", "target/comm_total", "target/bytes",
)  # fmt: skip
PER_GROUP = ("comm/{}", "clients/{}", "norm/extragrad/{}", "target/comm_{}", "similarity/delta_{}")
"""Metrics reported for every client group, e.g. ``comm/f`` and ``target/comm_g`` in VRCS's
federation, ``comm/clients`` in one population."""


def is_reported(metric: str) -> bool:
    """Whether runs report ``metric`` (for some federation)."""
    if not isinstance(metric, str):
        return False
    if metric in REPORTED:
        return True
    return any(re.fullmatch(re.escape(t).replace(r"\{\}", r"[A-Za-z0-9_]+"), metric) for t in PER_GROUP)

EVERY_ROUND = ("accuracy/test", "loss/test", "accuracy/server", "loss/server")  # every run, every round
HPARAMS_METRICS = ("accuracy/test", "loss/test", "accuracy/server", "loss/server", "comm/total")  # scalar tags
HPARAMS_SUFFIX = ".hparams"  # the HParams event file beside a run's own, in the same run directory

COMM_CURVES = ("accuracy/test", "loss/test")  # curves re-indexed by each communication counter


def comm_axes(groups: Sequence[str]) -> dict[str, str]:
    """Tag suffix → the counter used as step: every group's contacts and their total."""
    return {**{g: f"comm/{g}" for g in groups}, "total": "comm/total"}


@dataclass
class TargetTracker:
    """Records the first round whose test accuracy reaches ``target`` and what it cost: the
    round, the contacts with each group and in all, and the bytes (NaN until then)."""

    target: float | None
    groups: Sequence[str] = ()
    reached: dict[str, float] = field(default_factory=dict)

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = {"target/round": "round", **{f"target/comm_{a}": c for a, c in comm_axes(self.groups).items()}}
        if self.target is not None and not self.reached and metrics.get("accuracy/test", -math.inf) >= self.target:
            self.reached = {key: metrics[source] for key, source in keys.items()}
            self.reached["target/bytes"] = metrics["comm/bytes_sent"] + metrics["comm/bytes_received"]
        if self.target is None:
            return {}
        return self.reached or dict.fromkeys([*keys, "target/bytes"], math.nan)


class RunLogger:
    """Writes every metric per round to ``log_dir``, and ``COMM_CURVES`` against each
    communication counter to ``log_dir/vs_comm_<axis>`` (one TensorBoard run per axis,
    so that each has its own step and its own purge point on resume).

    A logger that starts a run purges what an earlier attempt in the same directory
    logged after the starting point: everything for a fresh start, what followed the
    checkpoint for a resumed one (``resume_round`` and the counters saved with it).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        groups: Sequence[str],
        resume_round: int = 0,
        resume_comm: dict[str, float] | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: sweep-file checks import this module

        log_dir = Path(log_dir)
        _quiet_writer_threads()
        self.log_dir = log_dir
        resume_comm = resume_comm or {}
        self.axes = comm_axes(groups)
        self._last_step = {axis: int(resume_comm.get(counter, 0)) for axis, counter in self.axes.items()}
        with writing(log_dir):
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_round + 1 if resume_round else 0)
            self.comm_writers = {
                axis: SummaryWriter(log_dir=str(log_dir / f"vs_comm_{axis}"), purge_step=self._last_step[axis] + 1)
                for axis in self.axes
            }

    def log(self, metrics: dict[str, float], rnd: int) -> None:
        with writing(self.log_dir):  # a full disk: one line naming the run's folder
            self._log(metrics, rnd)

    def _log(self, metrics: dict[str, float], rnd: int) -> None:
        for tag, value in metrics.items():
            if tag != "round" and not tag.startswith(("target/", "similarity/")):
                self.writer.add_scalar(tag, value, rnd)
        for axis, counter in self.axes.items():
            step = int(metrics.get(counter, 0))
            if step == self._last_step[axis]:
                continue  # no communication since the last point (or none yet)
            self._last_step[axis] = step
            for curve in (c for c in COMM_CURVES if c in metrics):  # no accuracy for a regression loss
                self.comm_writers[axis].add_scalar(f"{curve}/vs_comm_{axis}", metrics[curve], step)
        self.flush()  # every round: live curves, and nothing lost when a scheduler stops the run

    def flush(self) -> None:
        for writer in (self.writer, *self.comm_writers.values()):
            writer.flush()

    def log_once(self, metrics: dict[str, float]) -> None:
        """Scalars measured once, before the first round (step 0)."""
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, 0)

    def close(self) -> None:
        with writing(self.log_dir):
            for writer in (self.writer, *self.comm_writers.values()):
                writer.close()


def _quiet_writer_threads() -> None:
    """TensorBoard writes events on a thread of its own, which, when a write fails (a full
    disk), raises again in the run's thread at the next write and also prints its traceback
    through ``threading.excepthook``: keep only the run's (one line, :class:`RunLogger`)."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    hook = threading.excepthook
    if getattr(hook, "fedsweep_quiet", False):
        return

    def quiet(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError) and cause(args.exc_value):
            return
        hook(args)

    quiet.fedsweep_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = quiet


def write_hparams(
    log_dir: str | Path,
    hparams: dict[str, str | int | float | bool],
    *,
    failed: bool = False,
) -> Path:
    """Record a finished trial for TensorBoard's HParams dashboard in its own run directory
    ``log_dir`` (no extra run): the experiment (hyperparameter names and the metric tags
    :data:`HPARAMS_METRICS`), the session's ``hparams`` and its end
    status (failure for a diverged or failed trial). The dashboard reads each metric's value from
    the run's own scalar of that tag, its last step. Writes one event file ``*.hparams``; a
    trial recorded again (a resumed one) replaces it."""
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams as hparams_summaries
    from torch.utils.tensorboard.writer import FileWriter

    log_dir = Path(log_dir)
    _quiet_writer_threads()
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    metric_names = dict.fromkeys(HPARAMS_METRICS, 0.0)  # names only: values come from the run's scalars
    experiment, start, end = hparams_summaries(hparams, metric_names)
    if failed:  # torch writes success; the session's end status is a field of the plugin data
        plugin_data = end.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin_data.content)
        content.session_end_info.status = Status.STATUS_FAILURE
        plugin_data.content = content.SerializeToString()
    writer = FileWriter(str(log_dir), filename_suffix=HPARAMS_SUFFIX)
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.close()
    return log_dir
