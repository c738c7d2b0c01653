"""One experiment: build data, model, server, runtime and method from a config, then run the rounds.

The loop in :func:`run_experiment` is the whole story of a run, top to bottom:
round → evaluate → log. Methods do the maths; runtimes reach the clients.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedsweep.algorithms.similarity import estimate_similarity
from fedsweep.core.allocator import keep_freed_memory
from fedsweep.core.errors import DivergedError, SolverError
from fedsweep.core.threads import import_meanwhile, torch_threads
from fedsweep.core.weights import Weights
from fedsweep.experiment import components
from fedsweep.experiment.build import Run, build, make_runtime, prepare, seed_of
from fedsweep.experiment.checkpoint import check_config, load_checkpoint, restore, save_checkpoint
from fedsweep.core.targets import use_plugins
from fedsweep.experiment.config import to_container, uses_ray, validate
from fedsweep.experiment.metrics import RunLogger, TargetTracker
from fedsweep.federation.runtime.base import Runtime
from fedsweep.federation.runtime.ray_start import ray_session
from fedsweep.federation.server import Server
from fedsweep.task import Dataset
from fedsweep.task.compute import evaluate
from fedsweep.task.losses import Loss

Reporter = Callable[[dict[str, float]], None]


def run_experiment(
    cfg: Mapping[str, Any],
    *,
    log_dir: str | Path,
    report: Reporter | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    checked: bool = False,
    checkpoint: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Run ``cfg['rounds']`` rounds; log every metric to TensorBoard in ``log_dir``.

    ``report`` (e.g. ``ray.tune.report``) receives each round's metrics. With
    ``checkpoint.every: N`` the run saves ``checkpoint_path(log_dir, round)`` every N
    rounds (before that round's report), keeping the newest ``checkpoint.keep``;
    ``checkpoint.resume: <file>`` continues from one. ``timings``, if given, receives
    the wall-clock time (``time.time()``) at which each start-up phase ended: ``ray``,
    ``data`` (data, model and server built, clients attached), ``workers`` (every
    worker ready) and ``first_round``. ``checked``: the config was validated already (a sweep's
    driver checks every trial's); ``checkpoint``: the resume checkpoint, already read and checked
    against the config (read here otherwise). ``runtime``: a runtime to serve the clients instead of
    the config's (left open: a pool reused across runs pays its workers' start-up once). Returns
    the last round's metrics.
    """
    cfg = to_container(cfg)
    keep_freed_memory()  # this process computes: the model's forward passes, or a trial's whole run
    use_plugins(cfg.get("plugins"))  # a trial's process: the plug-ins its targets may name
    if not checked:
        validate(cfg)
    resume = cfg["checkpoint"]["resume"]
    if resume and checkpoint is None:
        checkpoint = load_checkpoint(resume)
        check_config(checkpoint, cfg, resume)
    log_dir = Path(log_dir)
    stamp = (lambda phase: timings.__setitem__(phase, time.time())) if timings is not None else (lambda phase: None)
    torch.manual_seed(cfg["seed"])
    ray = uses_ray(cfg)
    if ray and _steps_with_torch_optim(cfg):  # imported on a thread while the driver waits for Ray and its workers
        import_meanwhile("torch._dynamo")
    with ExitStack() as stack:
        if ray:  # the workers hold the cores: the driver's idle torch threads would spin on them after
            stack.enter_context(torch_threads(1))  # each parallel op (a round a third slower or more, 2 CPUs)
        background = ThreadPoolExecutor(max_workers=1)
        preparing = background.submit(prepare, cfg)  # data loads while Ray starts
        try:
            if ray:
                stack.enter_context(ray_session(cfg["runtime"].get("address"), dashboard=cfg["runtime"].get("dashboard", False)))
            if runtime is None:
                runtime = stack.enter_context(make_runtime(cfg, label=log_dir.name))
            stamp("ray")
            setup = preparing.result()
        finally:
            # the thread must end: while a thread that ran torch ops lives, the driver's own
            # backward passes measured 5x slower
            background.shutdown()
        run = build(cfg, setup, runtime)  # the pool's workers boot meanwhile
        del setup, preparing  # the whole training set: the clients' data (a copy of its rows) is what stays
        stamp("data")
        runtime.wait_ready()
        stamp("workers")
        tracker = TargetTracker(cfg["target_accuracy"], groups=run.oracle.groups)
        checkpoint_every = cfg["checkpoint"]["every"]
        done, state, oracle = 0, run.state, run.oracle
        if checkpoint is not None:
            done, state = restore(checkpoint, run.state, oracle.comm, tracker)
        # a rerun into the same directory (a restarted trial) replaces what was logged after its start
        logger = RunLogger(log_dir, groups=oracle.groups, resume_round=done, resume_comm=oracle.comm.as_metrics())
        similarity = {}
        if cfg["similarity"]["estimate"]:
            batch_size = cfg["similarity"]["batch_size"]
            similarity = estimate_similarity(
                oracle, state.x, iterations=cfg["similarity"]["iterations"], seed=seed_of(cfg, "method"),
                batch_size=batch_size,
            )  # fmt: skip
            logger.log_once(similarity)
            _print_similarity(similarity, getattr(run.method, "theta", None), batch_size)
        metrics: dict[str, float] = {}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        evaluation_threads = max(torch.get_num_threads(), min(cores, int(runtime.idle_cpus)))
        name = components.label(cfg["method"])
        bar = tqdm(range(done + 1, cfg["rounds"] + 1), desc=name, disable=not progress, unit="round")
        for rnd in bar:
            try:
                state, stats = run.method.round(state, oracle)
            except SolverError as err:
                raise DivergedError(_solver_message(err, rnd), round=rnd) from None
            state.x.to_model(run.server.model)
            evaluation = _evaluate(run.server.model, run.server, run.test_data, run.loss, threads=evaluation_threads)
            metrics = {**stats, **evaluation, **oracle.comm.as_metrics()}
            metrics["round"] = float(rnd)
            metrics.update(similarity)
            metrics.update(tracker.update(metrics))
            _check_finite(metrics, state.x, rnd, cfg, run)
            logger.log(metrics, rnd)
            bar.set_postfix({k: f"{metrics[m]:.3f}" for k, m in (("acc", "accuracy/test"), ("loss", "loss/test")) if m in metrics})
            if checkpoint_every and rnd % checkpoint_every == 0:  # before reporting: Tune persists it with the report
                save_checkpoint(
                    log_dir, keep=cfg["checkpoint"]["keep"], rnd=rnd, state=state, comm=oracle.comm, tracker=tracker,
                    config=cfg,
                )  # fmt: skip
            if report is not None:
                report(metrics)
            if rnd == done + 1:
                stamp("first_round")
        logger.close()
    return metrics


def _steps_with_torch_optim(cfg: Mapping[str, Any]) -> bool:
    """Whether the driver will run ``torch.optim``, whose first optimizer imports ``torch._dynamo``
    (0.75 s, ~90 MB of PSS): the method says so (``uses_torch_optim``: the server's argmin, a
    server optimizer). FedAvg's driver imports it only when it serves a share of the clients in
    ``vmap``ed blocks, and then its pool starts the import (``RayRuntime.attach``)."""
    method = components.locate(cfg["method"]["_target_"], "method")
    return bool(getattr(method, "uses_torch_optim", False))


SOLVER_ADVICE = {
    "max_steps": "raise solver.max_steps, or lower method.theta (theta ~ 1/delta)",
    "stalled": "the objective stopped decreasing in float64 with its gradient still large, as at the kinks of a "
    "ReLU network: use a smooth activation (model.activation=gelu) or raise solver.tolerance",
    "precision": "the step is below what the model's float32 parameters resolve (the run has converged that far); "
    "stop earlier (rounds) or raise solver.tolerance",
    "overflow": "lower method.theta",
    "epochs": "raise solver.epochs, lower solver.optimizer.lr, use solver=lbfgs, or set solver.tolerance=null "
    "to accept a fixed-step solve unchecked",
}


def _solver_message(err: SolverError, rnd: int) -> str:
    """One line: the round, where the argmin stopped and what to change."""
    return (
        f"stopped at round {rnd}: {err.what} reached residual {err.residual:.3g} after {err.steps} steps, "
        f"above its tolerance {err.tolerance:g} ({err.reason}; theta={err.theta:g}); {err.advice or SOLVER_ADVICE[err.reason]}"
    )


def _check_finite(metrics: dict[str, float], x: Weights, rnd: int, cfg: Mapping[str, Any], run: Run) -> None:
    """Stop a run, in one line and before it logs the round, whose iterate or metrics are no longer
    finite. (``target/*`` is NaN by design until the target is reached.)"""
    bad = [(k, v) for k, v in metrics.items() if not k.startswith("target/") and not math.isfinite(v)]
    norm = x.norm().item()
    if not math.isfinite(norm):
        bad.insert(0, ("the iterate's norm", norm))
    if not bad:
        return
    theta = getattr(run.method, "theta", None)
    steps = cfg["solver"].get("optimizer", {}).get("lr") if isinstance(cfg["solver"].get("optimizer"), Mapping) else None
    settings = ", ".join(
        ([f"method.theta={theta}"] if theta is not None else []) + ([f"solver.optimizer.lr={steps}"] if steps is not None else [])
    ) or f"method={components.label(cfg['method'])}"
    advice = "try a larger theta or a smaller solver.optimizer.lr" if steps is not None else "try a smaller theta"
    what, value = bad[0]
    raise DivergedError(f"diverged at round {rnd}: {what}={value} ({settings}); {advice}", round=rnd)


def _print_similarity(similarity: dict[str, float], theta: float | None, batch_size: int | None) -> None:
    """δ_G per group and the settings they suggest: θ ≈ 1/δ, and in VRCS's federation
    p ≈ δ_f/(δ_f + δ_g), which minimises the variance δ_f²/p + δ_g²/(1 − p) of VRCS's local estimate."""
    deltas = {key.removeprefix("similarity/delta_"): value for key, value in similarity.items()}
    if not deltas:
        return
    delta = max(max(deltas.values()), 1e-12)
    used = f" (method.theta={theta})" if theta is not None else ""
    kind = "exact Hessians" if batch_size is None else f"minibatch Hessians of {batch_size}, an overestimate"
    line = ", ".join(f"delta_{g} = {d:.4g}" for g, d in deltas.items()) + f"; theta ~ 1/delta = {1 / delta:.4g}{used}"
    if set(deltas) == {"f", "g"}:
        df, dg = deltas["f"], deltas["g"]
        line += f", p ~ delta_f/(delta_f + delta_g) = {df / (df + dg) if df + dg > 0 else 0.5:.3g}"
    print(f"similarity at x0 ({kind}): {line}")


def _evaluate(model: torch.nn.Module, server: Server, test: Dataset, loss: Loss, *, threads: int) -> dict[str, float]:
    """Test loss and accuracy, and, where the server holds data, h1 = Σ_G λ_G G1 with its accuracy
    averaged the same way (no accuracy when the labels are not classes)."""
    test_loss, test_acc = evaluate(model, test, loss, threads=threads)
    metrics = {"loss/test": test_loss}
    if test_acc is not None:
        metrics["accuracy/test"] = test_acc
    if server.data:
        parts = {group: evaluate(model, data, loss, threads=threads) for group, data in server.data.items()}
        total = sum(server.group_weights.values())
        metrics["loss/server"] = sum(server.group_weights[g] * ls for g, (ls, _) in parts.items()) / total
        if test_acc is not None:
            metrics["accuracy/server"] = sum(server.group_weights[g] * acc for g, (_, acc) in parts.items()) / total
    return metrics
