"""One experiment: build data, model, server, runtime and method from a config, then run the rounds.

The loop in :func:`run_experiment` is the whole story of a run, top to bottom:
round → evaluate → log. Methods do the maths; runtimes reach the clients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedsweep.experiment import components
from fedsweep.experiment.config import make_optimizer_factory, resolve_runtime, to_container, validate
from fedsweep.task import Dataset
from fedsweep.federation.client_data import ClientData
from fedsweep.core.errors import DivergedError
from fedsweep.core.errors import SolverError
from fedsweep.experiment.checkpoint import load_checkpoint, restore, save_checkpoint
from fedsweep.algorithms import Method, MethodState
from fedsweep.algorithms.similarity import estimate_similarity
from fedsweep.experiment.metrics import RunLogger, TargetTracker
from fedsweep.federation.oracle import FederatedOracle
from fedsweep.federation.runtime.base import Runtime
from fedsweep.federation.runtime.local import LocalRuntime
from fedsweep.federation.server import Server, ServerConfig
from fedsweep.experiment.build import Setup, check_model, prepare, seed_of
from fedsweep.task.losses import Loss
from fedsweep.task.compute import evaluate
from fedsweep.core.weights import Weights

Reporter = Callable[[dict[str, float]], None]


def make_runtime(cfg: Mapping[str, Any], *, label: str) -> Runtime:
    """The run's runtime; a Ray pool starts its workers now, so they boot while the driver loads
    data. A pool of no workers (``runtime.workers: 0``, or ``auto`` on less than 2 CPUs) is
    the in-process runtime."""
    runtime = cfg["runtime"]
    if runtime["name"] == "ray":
        import ray

        cluster = ray.cluster_resources()  # a sweep resolves "auto" for its trials' share before this
        runtime = resolve_runtime(dict(cfg), cpus=cluster.get("CPU", 1), gpus=cluster.get("GPU", 0))["runtime"]
    if runtime["name"] != "ray" or runtime["workers"] == 0:
        return LocalRuntime(device=cfg["device"])
    from fedsweep.federation.runtime.ray_runtime import RayRuntime, WorkerResources  # Ray only when asked for

    return RayRuntime(
        workers=runtime["workers"],
        resources=WorkerResources(num_cpus=runtime["num_cpus"], num_gpus=runtime["num_gpus"]),
        label=label,
        max_restarts=runtime["max_restarts"],
    )


def _on(data: Dataset, device: torch.device) -> Dataset:
    return Dataset(data.x.to(device), data.y.to(device))


@contextmanager
def _ray_if_needed(cfg: Mapping[str, Any]) -> Iterator[None]:
    """Ray for a ``runtime=ray`` run outside Tune: the one running, or a new one for the run
    (``fedsweep.federation.runtime.ray_start.ray_session``)."""
    if cfg["runtime"]["name"] != "ray":
        yield
        return
    from fedsweep.federation.runtime.ray_start import ray_session

    with ray_session(cfg["runtime"]["address"], dashboard=cfg["runtime"]["dashboard"]):
        yield


@dataclass
class Run:
    """A built run: what the round loop touches."""

    method: Method
    state: MethodState
    oracle: FederatedOracle
    server: Server
    server_data: dict[str, Dataset]
    test_data: Dataset
    loss: Loss


def build(cfg: Mapping[str, Any], setup: Setup, runtime: Runtime) -> Run:
    """The clients attached to ``runtime``, the server, the method and its start."""
    clients = ClientData.from_partition(setup.partition)
    model = setup.model_fn()
    check_model(model, cfg)
    runtime.attach(clients, setup.model_fn, loss=setup.loss, vectorize=cfg["runtime"]["vectorize"])
    device = setup.device
    weights = setup.partition.group_weights()
    server_data = {group: _on(data, device) for group, data in setup.partition.server.items()}
    server = Server(
        model.to(device),
        server_data,
        group_weights=weights,
        config=ServerConfig(**cfg["server"]),
        make_optimizer=make_optimizer_factory(cfg["optimizer"]),
        loss=setup.loss,
    )
    deterministic = cfg["client"]["batch_size"] is None and cfg["server"]["grad_batch_size"] is None
    oracle = FederatedOracle(
        runtime, clients, server, group_weights=weights, batch_size=cfg["client"]["batch_size"],
        deterministic=deterministic, device=device,
    )  # fmt: skip
    method = components.build("method", cfg["method"])
    state = method.init(Weights.from_model(server.model), seed=seed_of(cfg, "method"), oracle=oracle)
    return Run(method, state, oracle, server, server_data, _on(setup.bundle.test, device), setup.loss)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """The driver's torch threads while a worker pool computes: idle torch threads spin after
    each parallel op, and on the workers' cores that made a round a third slower or more (2 CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_experiment(
    cfg: Mapping[str, Any],
    *,
    log_dir: str | Path,
    report: Reporter | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Run ``cfg['rounds']`` rounds; log every metric to TensorBoard in ``log_dir``.

    ``report`` (e.g. ``ray.tune.report``) receives each round's metrics. With
    ``checkpoint.every: N`` the run saves ``checkpoint_path(log_dir, round)`` every N
    rounds (before that round's report), keeping the newest ``checkpoint.keep``;
    ``checkpoint.resume: <file>`` continues from one. ``timings``, if given, receives
    the wall-clock time (``time.time()``) at which each start-up phase ended: ``ray``,
    ``data`` (data, model and server built, clients attached), ``workers`` (every
    worker ready) and ``first_round``. Returns the last round's metrics.
    """
    cfg = to_container(cfg)
    validate(cfg)
    log_dir = Path(log_dir)
    stamp = (lambda phase: timings.__setitem__(phase, time.time())) if timings is not None else (lambda phase: None)
    torch.manual_seed(cfg["seed"])
    with ExitStack() as stack:
        if cfg["runtime"]["name"] == "ray":  # the workers hold the cores
            stack.enter_context(_torch_threads(1))
        background = ThreadPoolExecutor(max_workers=1)
        preparing = background.submit(prepare, cfg)  # data loads while Ray starts
        try:
            stack.enter_context(_ray_if_needed(cfg))
            runtime = stack.enter_context(make_runtime(cfg, label=log_dir.name))
            stamp("ray")
            setup = preparing.result()
        finally:
            # the thread must end: while a thread that ran torch ops lives, the driver's own
            # backward passes measured 5x slower
            background.shutdown()
        run = build(cfg, setup, runtime)  # the pool's workers boot meanwhile
        stamp("data")
        runtime.wait_ready()
        stamp("workers")
        tracker = TargetTracker(cfg["target_accuracy"], groups=run.oracle.groups)
        checkpoint_every, resume = cfg["checkpoint"]["every"], cfg["checkpoint"]["resume"]
        done, state, oracle = 0, run.state, run.oracle
        if resume:
            done, state = restore(load_checkpoint(resume), run.state, oracle.comm, tracker)
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
        name = components.label(cfg["method"])
        bar = tqdm(range(done + 1, cfg["rounds"] + 1), desc=name, disable=not progress, unit="round")
        for rnd in bar:
            try:
                state, stats = run.method.round(state, oracle)
            except SolverError as err:
                raise DivergedError(_solver_message(err, rnd), round=rnd) from None
            state.x.to_model(run.server.model)
            evaluation = _evaluate(run.server.model, run.server, run.test_data, run.loss)
            metrics = {**stats, **evaluation, **oracle.comm.as_metrics()}
            metrics["round"] = float(rnd)
            metrics.update(similarity)
            metrics.update(tracker.update(metrics))
            _check_finite(metrics, state.x, rnd, cfg, getattr(run.method, "theta", None))
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


SOLVER_ADVICE = {
    "max_steps": "raise server.max_steps, or lower method.theta (theta ~ 1/delta)",
    "stalled": "the objective stopped decreasing in float64 with its gradient still large, as at the kinks of a "
    "ReLU network: use a smooth activation (model.activation=gelu) or raise server.tolerance",
    "precision": "the step is below what the model's float32 parameters resolve (the run has converged that far); "
    "stop earlier (rounds) or raise server.tolerance",
    "overflow": "lower method.theta",
    "epochs": "raise server.epochs, lower optimizer.lr, use server.solver=lbfgs, or set server.tolerance=null "
    "to accept a fixed-step solve unchecked",
}


def _solver_message(err: SolverError, rnd: int) -> str:
    """One line: the round, where the argmin stopped and what to change."""
    return (
        f"stopped at round {rnd}: the argmin reached residual {err.residual:.3g} after {err.steps} steps, "
        f"above its tolerance {err.tolerance:g} ({err.reason}; method.theta={err.theta:g}); {SOLVER_ADVICE[err.reason]}"
    )


def _check_finite(metrics: dict[str, float], x: Weights, rnd: int, cfg: Mapping[str, Any], theta: float | None) -> None:
    """Stop a run, in one line and before it logs the round, whose iterate or metrics are no longer
    finite or whose argmin stopped short of its tolerance. (``target/*`` is NaN by design until
    the target is reached.)"""
    bad = [(k, v) for k, v in metrics.items() if not k.startswith("target/") and not math.isfinite(v)]
    norm = x.norm().item()
    if not math.isfinite(norm):
        bad.insert(0, ("the iterate's norm", norm))
    by_optimizer = cfg["server"]["solver"] == "optimizer"
    settings = ", ".join(
        ([f"method.theta={theta}"] if theta is not None else []) + ([f"optimizer.lr={cfg['optimizer']['lr']}"] if by_optimizer else [])
    ) or f"method={components.label(cfg['method'])}"
    if bad:
        what, value = bad[0]
        advice = "try a larger theta or a smaller optimizer.lr" if by_optimizer else "try a smaller theta"
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


def _evaluate(model: torch.nn.Module, server: Server, test: Dataset, loss: Loss) -> dict[str, float]:
    """Test loss and accuracy, and, where the server holds data, h1 = Σ_G λ_G G1 with its accuracy
    averaged the same way (no accuracy when the labels are not classes)."""
    test_loss, test_acc = evaluate(model, test, loss)
    metrics = {"loss/test": test_loss}
    if test_acc is not None:
        metrics["accuracy/test"] = test_acc
    if server.data:
        parts = {group: evaluate(model, data, loss) for group, data in server.data.items()}
        total = sum(server.group_weights.values())
        metrics["loss/server"] = sum(server.group_weights[g] * ls for g, (ls, _) in parts.items()) / total
        if test_acc is not None:
            metrics["accuracy/server"] = sum(server.group_weights[g] * acc for g, (_, acc) in parts.items()) / total
    return metrics
