"""Sweep a config with Ray Tune (``fedsweep tune sweeps/vrcs_grid.yaml``, ``python -m fedsweep.tune …``).

Every trial is a plain function that runs one experiment (``fedsweep.experiment.loop``),
reports each round with ``tune.report`` and streams its metrics to its own
TensorBoard directory, ``results/<name>/tensorboard/<trial>``, the sweep's one
TensorBoard tree (Tune's own TensorBoard logger is off; each ended trial's
hyperparameters join its run for the HParams dashboard). The sweep file picks
Tune's search (grid, random or Optuna) and scheduler (ASHA); trials' output
reaches the terminal behind their short names. The sweep ends with a table
(``results/<name>/results.csv``) and plots, and with ``repeats`` the statistics over seeds
(``summary.csv``, ``best.csv``: ``fedsweep.sweep.summary``). Running the same command again
resumes a stopped sweep without redoing finished trials.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsweep.core.disk import DiskError, check_writable, writing
from fedsweep.experiment.config import resolve_runtime, uses_ray
from fedsweep.core.errors import ConfigError, DivergedError, SolverError
from fedsweep.experiment.metrics import EVERY_ROUND
from fedsweep.sweep.sweep_file import Sweep
from fedsweep.sweep.grid import expand, param_space, short_label, trial_count

RAY_OUTPUT_ENVIRONMENT = {
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
"""Ray's worker output to the driver without its "(name pid=…)" prefix (each trial line carries the
trial's own) and without merging lines that differ only in numbers (two trials' "diverged at
round 1" lines would show as one), both read when Ray is imported; and no warning each time
trials checkpoint within 5 s of each other (short trials of a sweep with checkpoints do)."""

RESULTS_DIR = Path("results")
FAILURE_RETRIES = 2  # times Tune restarts a failed trial from its last checkpoint
LOCKFILE = ".driver.lock"  # in the sweep's folder: the pid of the driver running it
ENDED = ("done", "stopped early", "diverged", "error")  # statuses of trials that will not run again


def trial_resources(config: dict[str, Any], share: dict[str, float] | None = None):
    """A bundle for the trial itself and one per worker: actors a trial creates must fit its
    placement group. The trial's own bundle holds its server's GPU share (like a worker's),
    a CPU when it computes in-process (no workers), and a worker's CPUs when it serves a share
    beside its workers (``runtime.driver_serves``). ``share`` resolves ``auto`` values (a grid
    may set them) as :func:`trial` does."""
    from ray import tune

    pool = uses_ray(config)
    runtime = (resolve_runtime(config, **share) if share else config)["runtime"]
    workers = runtime["workers"] if pool else 0
    gpu = runtime.get("num_gpus", 0) if pool else 0
    own: dict[str, float] = {"GPU": gpu} if gpu else {}
    if workers == 0:
        return tune.PlacementGroupFactory([{"CPU": 1, **own}])
    bundle = {"CPU": runtime["num_cpus"], **own}
    if runtime.get("driver_serves") is True and runtime["num_cpus"]:
        own = {"CPU": runtime["num_cpus"], **own}
    return tune.PlacementGroupFactory([own] + [dict(bundle) for _ in range(workers)])


def trial_share(sweep: Sweep, trials: int) -> dict[str, float]:
    """One trial's share of the cluster: its CPUs divided among the trials that run at once,
    and the cluster's GPUs (what ``runtime.workers`` and ``runtime.num_gpus: auto`` resolve to)."""
    import ray

    cluster = ray.cluster_resources()
    concurrent = min(sweep.max_concurrent_trials or trials, trials)
    return {"cpus": cluster.get("CPU", 1) / concurrent, "gpus": cluster.get("GPU", 0)}


def check_trials_fit(points: list[dict[str, Any]], share: dict[str, float]) -> None:
    """One line, before any trial is placed, when a trial's workers ask more than the cluster has."""
    import ray

    from fedsweep.federation.runtime.resources import check_fits

    cluster = ray.cluster_resources()
    for point in points:
        if uses_ray(point):
            check_fits(resolve_runtime(point, **share)["runtime"], cpus=cluster.get("CPU", 0), gpus=cluster.get("GPU", 0),
                       where="the Ray cluster", trial=True)  # fmt: skip


def trial(config: dict[str, Any], *, tensorboard_root: str, share: dict[str, float], keys: tuple[str, ...] = ()) -> None:
    """A Tune trial: one experiment on its share of the cluster, reported every round; what it
    prints reaches the driver behind the trial's short name (its grid ``keys``' values)."""
    from ray import tune

    from fedsweep.sweep.trial_output import prefixed_output, trial_prefix

    context = tune.get_context()
    with prefixed_output(trial_prefix(context.get_trial_id(), config, keys)):
        _trial(config, tensorboard_root=tensorboard_root, share=share)


def _trial(config: dict[str, Any], *, tensorboard_root: str, share: dict[str, float]) -> None:
    import torch
    from ray import tune

    from fedsweep.experiment.checkpoint import FILENAME, checkpoint_path
    from fedsweep.experiment.loop import run_experiment

    torch.set_num_threads(1)  # the trial's share: one CPU when it serves its clients itself, none beside workers
    config = resolve_runtime(config, **share)
    log_dir = Path(tensorboard_root) / tune.get_context().get_trial_name()
    saved = tune.get_checkpoint()
    if saved is not None:  # a resumed sweep: continue this trial where it stopped
        config = {**config, "checkpoint": {**config["checkpoint"], "resume": str(Path(saved.path) / FILENAME)}}
    every = config["checkpoint"]["every"]

    def report(metrics: dict[str, float]) -> None:
        if every and int(metrics["round"]) % every == 0:
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_path(log_dir, int(metrics["round"])).parent))
            tune.report(metrics, checkpoint=checkpoint)
        else:
            tune.report(metrics)

    reached = {"round": 0.0}

    def report_and_track(metrics: dict[str, float]) -> None:
        reached["round"] = float(metrics["round"])
        report(metrics)

    # Results, not crashes: the table marks the trial and does not rank it; NaN for the metrics a
    # search or scheduler may follow. The driver prints the reason, one line (a trial's last
    # prints can miss the terminal when the sweep ends).
    try:
        run_experiment(config, log_dir=log_dir, report=report_and_track, progress=False, checked=True)  # the driver checked it
    except DivergedError as err:
        diverged = {"round": float(err.round), "diverged": 1.0, "diverged/reason": str(err)}
        tune.report({**dict.fromkeys(EVERY_ROUND, math.nan), **diverged})
    except (ConfigError, SolverError) as err:  # what this trial's node refutes (e.g. device=cuda without
        # CUDA) or a solve that stops short: the same on every retry, so a result, not a Tune failure
        failed = {"round": reached["round"], "failed": 1.0, "failed/reason": f"error: {err}"}
        tune.report({**dict.fromkeys(EVERY_ROUND, math.nan), **failed})


def trial_name(sweep: Sweep):
    def name(t) -> str:
        return f"{t.trial_id}_{short_label(t.config, sweep.columns)}"

    return name


def run_sweep(sweep: Sweep, *, results_dir: Path = RESULTS_DIR, address: str | None = None, dashboard: bool = True):
    """Run (or resume) ``sweep``; returns its results directory and its table (a DataFrame).
    ``dashboard``: a Ray the sweep starts shows it in Ray's dashboard (on 127.0.0.1).

    The sweep writes only inside ``results_dir/<name>/`` (mode 700), and one driver at a time.
    """
    base, grid, points = expand(sweep)  # validates the sweep's configs before Ray starts
    for key, value in RAY_OUTPUT_ENVIRONMENT.items():  # before Ray is imported (else Ray's defaults stay)
        os.environ.setdefault(key, value)
    root = results_dir.resolve()
    exp_dir = (root / sweep.name).resolve()
    if exp_dir.parent != root:  # e.g. a link planted under the sweep's name
        raise ConfigError(f"the sweep folder {exp_dir} lies outside the results folder {root}")
    check_writable(root, "the sweep's results")  # a file, read-only or full: one line, before Ray starts
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    _check_private(exp_dir)
    exp_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(exp_dir, 0o700)  # results (and Tune's pickles) are private to their owner
    with one_driver(exp_dir):
        return _run_sweep(sweep, base, grid, points, exp_dir, results_dir=root, address=address, dashboard=dashboard)


def _check_private(exp_dir: Path) -> None:
    """Resuming unpickles Ray Tune's state (``tuner.pkl``, pickles inside ``experiment_state-*.json``,
    trial state) and the driver writes ``results.csv``, the lock and the plots: refuse a folder
    holding any link (never followed) or any file that someone else owns or may write."""
    for path in (exp_dir, *exp_dir.rglob("*")) if exp_dir.exists() else ():
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise ConfigError(f"{path} is a link; a sweep folder's files are never followed (remove it to resume)")
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise ConfigError(
                f"{path} is not private to you (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}); "
                "refusing to resume from files others could have written"
            )


@contextmanager
def one_driver(exp_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``exp_dir`` while a driver runs its sweep: a second driver
    stops at once with one line naming the folder and the holder's pid."""
    with open(exp_dir / LOCKFILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise ConfigError(f"{exp_dir} is in use by another sweep driver (pid {holder}); wait for it or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_sweep(sweep: Sweep, base, grid, points, exp_dir: Path, *, results_dir: Path, address: str | None, dashboard: bool):
    import ray
    from ray import tune

    from fedsweep.sweep.tune_state import DiskGuard, disk_cause, disk_text, quiet_on_disk, repair_state

    trials = trial_count(sweep, grid)
    saved = exp_dir / "sweep.yaml"
    if saved.exists() and saved.read_text() != sweep.source:
        raise ConfigError(
            f"{exp_dir} holds a different sweep named {sweep.name!r}; change 'name' or move that directory"
        )
    saved.write_text(sweep.source)
    tensorboard_root = exp_dir / "tensorboard"

    guard = DiskGuard(exp_dir)  # a full disk stops the sweep in one line, its state kept whole
    started = not ray.is_initialized()
    if started:
        from fedsweep.federation.runtime.ray_start import init_ray

        context = init_ray(address, dashboard=dashboard, trial_output=True)
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}")
    try:
        share = trial_share(sweep, trials)
        check_trials_fit(points, share)  # Ray would keep a trial that cannot fit pending forever
        trainable = tune.with_resources(
            tune.with_parameters(trial, tensorboard_root=str(tensorboard_root), share=share, keys=tuple(sweep.columns)),
            functools.partial(trial_resources, share=share),
        )
        if tune.Tuner.can_restore(str(exp_dir)):
            print(f"Resuming {exp_dir} (finished trials are kept)")
            repaired = repair_state(exp_dir)  # a state a full disk cut short: its last whole copy
            if repaired:
                print(repaired)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(resolve_runtime(base, **share), grid, sweep.search),
                tune_config=tune.TuneConfig(
                    num_samples=sweep.num_samples,
                    search_alg=search_algorithm(sweep, seed=base["seed"]),
                    scheduler=scheduler(sweep, rounds=max(p["rounds"] for p in points)),
                    reuse_actors=True,  # a trial's process (torch imported) serves the next trial
                    trial_name_creator=trial_name(sweep),
                    trial_dirname_creator=trial_name(sweep),
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=str(results_dir),
                    verbose=0,  # one line per trial start and end instead (callbacks())
                    callbacks=callbacks(tensorboard_root, sweep, guard),
                    # bounded: each trial keeps its newest checkpoint.keep checkpoints
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=base["checkpoint"]["keep"]),
                    # a trial whose process or node dies starts again from its last checkpoint
                    failure_config=tune.FailureConfig(max_failures=FAILURE_RETRIES),
                ),
            )
        with _environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):  # only the loggers of callbacks()
            try:
                with quiet_on_disk(guard):  # a full disk: one line, not Ray's tracebacks
                    results = tuner.fit()
            except Exception as err:  # Tune's own write failed on a full disk (its state is synced apart)
                found = disk_cause(err, exp_dir) or disk_text(str(err), exp_dir)
                if found is None and guard.error is None:
                    raise
                guard.error = guard.error or found
    finally:
        guard.release()
        if started:
            with quiet_on_disk(guard):
                ray.shutdown()
    if guard.error:  # stopped as Ctrl-C stops it: the trials keep their checkpoints
        raise DiskError(f"{guard.error}; the sweep stopped with its trials' checkpoints kept")

    from fedsweep.sweep.report import write_report
    from fedsweep.sweep.summary import printable, seed_text

    table = write_report(results, sweep, exp_dir)
    print(f"\nTensorBoard logs: {tensorboard_root}   (tensorboard --logdir {tensorboard_root})")
    print(f"Results: {exp_dir / 'results.csv'}, plots: {exp_dir / 'accuracy.png'}, {exp_dir / 'accuracy_vs_comm.png'}\n")
    print(table.drop(columns=[c for c in table if c.startswith("budget/")]).to_string(index=False))
    select, report = (seed_text(seeds) for seeds in sweep.seed_split)
    censored = "; target/*: seeds that reached it, median (never-reached seeds as never), mean at budget"
    if "summary" in table.attrs:
        print(f"\nPer configuration over seeds {select} (mean ± 95% CI{censored}; {exp_dir / 'summary.csv'}):")
        print(printable(table.attrs["summary"]).to_string(index=False))
    if "best" in table.attrs:
        chosen = (f"chosen on seeds {select}, reported on seeds {report}" if sweep.select_seeds else
                  f"chosen and reported on the same seeds {select}, so optimistic (select_seeds reports on fresh ones)")  # fmt: skip
        print(f"\nThe best configurations, {chosen} ({exp_dir / 'best.csv'}):")
        print(printable(table.attrs["best"]).to_string(index=False))
    ended = table["status"].str.startswith(ENDED) if len(table) else []
    table.attrs["unfinished"] = unfinished = trials - int(sum(ended))  # those that never started included
    if unfinished:
        print(f"\n{unfinished} of {trials} trial(s) not finished: run the same command again to resume them.")
    return exp_dir, table


def search_algorithm(sweep: Sweep, *, seed: int):
    """Tune's search, running at most ``max_concurrent_trials`` at once: its variant generator
    (grid and random; sampling seeded by the config's seed), or Optuna's TPE on the sweep's metric."""
    if sweep.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study and trial
        searcher = OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed)
        return ConcurrencyLimiter(searcher, sweep.max_concurrent_trials) if sweep.max_concurrent_trials else searcher
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=sweep.max_concurrent_trials or 0)


def scheduler(sweep: Sweep, *, rounds: int):
    """ASHA on the sweep's metric, counting reported rounds; None: every trial runs to the end."""
    if sweep.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="round",
        metric=sweep.metric,
        mode=sweep.mode,
        max_t=rounds,
        grace_period=sweep.scheduler.grace_period,
        reduction_factor=sweep.scheduler.reduction_factor,
    )


def callbacks(tensorboard_root: Path, sweep: Sweep, guard: DiskGuard | None = None) -> list:
    """Tune's CSV and JSON loggers (its results and tables read them), the HParams record and a
    line per trial start and end; not Tune's TensorBoard logger, whose curves would repeat each
    trial's own."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from fedsweep.sweep.trial_output import HParamsCallback, ProgressCallback

    keys = list(sweep.columns)
    on_disk_error = guard.stop if guard else None
    return [CSVLoggerCallback(), JsonLoggerCallback(), HParamsCallback(str(tensorboard_root), keys, on_disk_error),
            ProgressCallback(keys, sweep.metric), *([guard] if guard else [])]  # fmt: skip


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
