"""What a sweep's trials show: their output on the driver's terminal, one line each behind the
trial's short name, and their hyperparameters in TensorBoard's HParams dashboard.

Output: a trial's ``print`` (and its warnings) goes through :func:`prefixed_output`, which puts
``[#3 theta=0.05,p=0.2] `` before every line; Ray forwards the trial process's output to the
driver (``init_ray(..., trial_output=True)``) without its own ``(pid=…)`` prefix and with Ray's
own logging held at warnings.

Progress: Tune's own reporter is quiet (a table of every trial's whole config per start would
bury these lines); :class:`ProgressCallback` prints one line as each trial starts and ends.

HParams: :class:`HParamsCallback`, a Tune callback on the driver, records every trial that ends
(finished, stopped early by the scheduler, diverged or failed) in the trial's own TensorBoard run
directory, ``<tensorboard root>/<trial name>``, beside its curves (Tune's own TensorBoard logger is
off: see ``fedsweep.sweep.driver``), so TensorBoard shows one run per trial and every curve once.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from fedsweep.core.disk import cause
from fedsweep.experiment.metrics import write_hparams
from fedsweep.sweep.report import status
from fedsweep.sweep.grid import label, short_label


class PrefixedLines(io.TextIOBase):
    """A text stream that writes every complete line to ``target`` behind ``prefix``."""

    def __init__(self, prefix: str, target: TextIO) -> None:
        self.prefix, self.target, self._partial = prefix, target, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.target.write(f"{self.prefix}{line}\n")
        if lines:
            self.target.flush()
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        if self._partial:
            self.write("\n")
        super().close()


@contextmanager
def prefixed_output(prefix: str) -> Iterator[None]:
    """Within the block, this process's stdout and stderr lines carry ``prefix``, and Ray's own
    logging in it says only warnings (not e.g. a line per checkpoint)."""
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(max(level, logging.WARNING))
    out, err = PrefixedLines(prefix, sys.stdout), PrefixedLines(prefix, sys.stderr)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            yield
    finally:
        out.close()
        err.close()
        ray_logger.setLevel(level)


def trial_prefix(trial_id: str, config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``[#3 theta=0.05,p=0.2] ``: the trial's number in the sweep and its grid values."""
    number = trial_id.rsplit("_", 1)[-1]
    number = str(int(number)) if number.isdigit() else trial_id
    return f"[#{number} {short_label(config, keys)}] "


def hparam_value(value: Any) -> str | int | float | bool | None:
    """A config value as an HParams value (numbers, strings and booleans; anything else as text)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class HParamsCallback(Callback):
    """Writes each ended trial's grid values and final status to its TensorBoard run directory."""

    def __init__(self, tensorboard_root: str, keys: Sequence[str], on_disk_error: Callable[[str], None] | None = None) -> None:
        self.root, self.keys, self.on_disk_error = str(tensorboard_root), tuple(keys), on_disk_error

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        self._record(trial, failed=bool(result.get("diverged") or result.get("failed")))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, failed=True)

    def _record(self, trial, *, failed: bool) -> None:
        values = {key: label(trial.config, key) for key in self.keys}  # None: the key does not apply
        hparams = {key: hparam_value(value) for key, value in values.items() if value is not None}
        folder = Path(self.root) / str(trial)
        try:
            write_hparams(folder, hparams, failed=failed)
        except OSError as err:  # a full disk: the sweep stops (one line), the record is written on resume
            if cause(err) is None or self.on_disk_error is None:
                raise
            self.on_disk_error(f"cannot write {folder}: {cause(err)}")


class ProgressCallback(Callback):
    """One line on the driver's terminal as each trial starts and as it ends, e.g.
    ``[#3 theta=0.05,p=0.2] done at round 15: accuracy/test=0.8739``, or a diverged trial's reason."""

    def __init__(self, keys: Sequence[str], metric: str) -> None:
        self.keys, self.metric = tuple(keys), metric

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        print(f"{trial_prefix(trial.trial_id, trial.config, self.keys)}started", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, error=True)

    def _ended(self, trial, *, error: bool) -> None:
        result = trial.last_result or {}
        state = status(result, trial.config["rounds"], error=error)
        if state == "done" or state.startswith("stopped early"):  # "at round r": r is a round, not a count
            state = f"{state.split(' at ')[0]} at round {int(result['round'])}"
        if state.startswith("diverged") and result.get("diverged/reason"):
            state = result["diverged/reason"]  # "diverged at round r: …; try …"
        elif result.get("failed/reason"):
            state, error = result["failed/reason"], True  # "error: device=cuda but …"
        value = result.get(self.metric)
        shown = f": {self.metric}={value:.4g}" if isinstance(value, float) and not error and "diverged" not in state else ""
        print(f"{trial_prefix(trial.trial_id, trial.config, self.keys)}{state}{shown}", flush=True)
