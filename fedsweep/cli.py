"""The ``fedsweep`` command: ``fedsweep run key=value …`` and ``fedsweep tune sweeps/x.yaml …``
(the same as ``python -m fedsweep.run …`` and ``python -m fedsweep.tune …``), and ``fedsweep ray
start|status|stop`` (a local Ray kept running between commands). Everything here is
argument handling and printing; the work is ``fedsweep.experiment`` and ``fedsweep.sweep``."""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from omegaconf import OmegaConf

from fedsweep.core.disk import DiskError, check_writable, writing
from fedsweep.core.errors import ConfigError, RunError
from fedsweep.experiment.config import compose, search_path, to_container, validate
from fedsweep.experiment.run_dir import RUNS_DIR, check_run_dir, open_run_dir


def resume_checkpoint(cfg: dict) -> dict | None:
    """The checkpoint ``checkpoint.resume`` names, read once and checked against ``cfg`` (one line
    otherwise), before anything is written."""
    path = cfg["checkpoint"]["resume"]
    if path is None:
        return None
    from fedsweep.experiment.checkpoint import check_config, load_checkpoint

    payload = load_checkpoint(path)
    check_config(payload, cfg, path)
    return payload


def kept(log_dir: Path, overrides: list[str]) -> str:
    """What a stopped run kept and the command that continues it (``""`` without a checkpoint)."""
    from fedsweep.experiment.checkpoint import checkpoint_path, saved_rounds

    saved = saved_rounds(log_dir)
    if not saved:
        again = " ".join([sys.executable, "-m", "fedsweep.run", *overrides])
        return f"; nothing kept to continue from (no checkpoint in {log_dir}); start again with: {again}"
    again = [arg for arg in overrides if not arg.startswith(("checkpoint.resume=", "log_dir="))]
    command = [sys.executable, "-m", "fedsweep.run", *again, f"log_dir={log_dir}",
               f"checkpoint.resume={checkpoint_path(log_dir, saved[-1])}"]  # fmt: skip
    return f"; checkpoint of round {saved[-1]} kept, continue with: {' '.join(command)}"


USAGE = ("usage: fedsweep run [key=value ...] | fedsweep tune SWEEP_FILE [key=value ...] [--name NAME] [--results DIR]"
         " | fedsweep ray start|status|stop")


def sigterm_as_ctrl_c() -> None:
    """SIGTERM stops a command as Ctrl-C does (Ray Tune's graceful stop while a sweep runs,
    KeyboardInterrupt otherwise): the run's Ray is shut down and what was kept is said."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))


def interrupt_handled() -> None:
    """Say a caught Ctrl-C (or SIGTERM) was handled, so the process exits with the code returned.

    CPython marks a ``KeyboardInterrupt`` that leaves code run from a string (``exec`` of a str:
    ``dataclasses`` does this, so torch's import does too) as unhandled even when it is caught
    later, and a ``python -m`` program then ends by SIGINT (exit -2) instead of with its code.
    Running a string clears the mark (``run_eval_code_obj`` in CPython's ``pythonrun.c`` resets
    it first). Seen when SIGTERM came while torch was being imported."""
    exec("")  # noqa: S102 - an empty program; see above


def exit_now(code: int | None) -> NoReturn:
    """End the command with ``code`` once what a program's exit does is done: threading's exit
    hooks run (idle thread pools told to end) and other (non-daemon) threads joined, ``atexit``
    handlers run (Ray's shutdown among them), output flushed. Python's teardown of every module
    after that is skipped: with torch and Ray imported it took 0.6-0.7 s (this machine), which
    each command paid after its last line and before a script's next."""
    shutdown = getattr(threading, "_shutdown", None)  # CPython's first step at exit, in this order
    if shutdown is not None:
        shutdown()
    else:  # pragma: no cover - other Pythons
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code or 0)


def main(argv: list[str] | None = None) -> int:
    """``fedsweep run|tune|ray …``; as the command itself (no ``argv``) it exits by :func:`exit_now`."""
    if argv is None:
        exit_now(_main(sys.argv[1:]))
    return _main(argv)


def _main(args: list[str]) -> int:
    if not args or args[0] not in ("run", "tune", "ray"):
        print(USAGE, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    if args[0] == "ray":
        return ray_main(args[1:])
    sigterm_as_ctrl_c()
    return run_main(args[1:]) if args[0] == "run" else tune_main(args[1:])


def ray_main(argv: list[str]) -> int:
    """``fedsweep ray start|status|stop``: a local Ray that every later ``fedsweep run runtime=ray``
    and ``fedsweep tune`` joins (unless given an address), kept until ``fedsweep ray stop``."""
    parser = argparse.ArgumentParser(prog="fedsweep ray", description=ray_main.__doc__)
    parser.add_argument("action", choices=["start", "status", "stop"])
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs it offers (default: the machine's)")
    parser.add_argument("--dashboard", action="store_true", help="with Ray's dashboard (+~1 GB), on 127.0.0.1")
    parser.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES",
                        help="its object store's size (default: Ray's, 30%% of memory)")  # fmt: skip
    parser.add_argument("--workers", default="auto", type=_workers, metavar="N|auto",
                        help="warm workers it keeps ready for the next run (default auto: as many as a run's pool)")  # fmt: skip
    args = parser.parse_args(argv)
    from fedsweep.federation.runtime import local_ray

    try:
        if args.action == "start":
            state = local_ray.start(num_cpus=args.num_cpus, dashboard=args.dashboard,
                                    object_store_memory=args.object_store_memory, workers=args.workers)  # fmt: skip
            print(("already running: " if state.get("already") else "started: ") + local_ray.describe(state))
            print("every `fedsweep run runtime=ray` and `fedsweep tune` now joins it; `fedsweep ray stop` ends it")
        elif args.action == "status":
            state = local_ray.status()
            print(local_ray.describe(state) if state else "no local Ray kept (start one with `fedsweep ray start`)")
            return 0 if state else 1
        else:
            state, count = local_ray.stop()
            print(f"stopped the local Ray at {state.get('address', '?')} ({count} processes)" if state
                  else "no local Ray kept: nothing to stop")  # fmt: skip
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _workers(value: str) -> int | str:
    """``--workers``: ``auto`` or a count >= 0."""
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"give a count >= 0 or auto, not {value!r}")


def split_config_dirs(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` without its ``--config-dir DIR`` / ``--config-dir=DIR`` options, and those DIRs."""
    rest, dirs, it = [], [], iter(args)
    for arg in it:
        if arg == "--config-dir":
            value = next(it, None)
            if value is None:
                raise ConfigError("--config-dir needs a folder")
            dirs.append(value)
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, dirs


def run_main(argv: list[str] | None = None) -> int:
    """Run one experiment: ``python -m fedsweep.run method.theta=0.05 method.p=0.5 method.q=0.5``.

    Arguments are Hydra overrides of ``fedsweep/configs/config.yaml`` (``key=value``,
    ``group=option``, ``+new_key=value``), composed with Hydra's compose API and
    checked before anything is written; ``--cfg`` prints the composed config and
    exits; ``--config-dir DIR`` (repeatable) adds a folder of your own config groups and
    options to Hydra's search path (as ``hydra.searchpath=[file://DIR]`` does). The run directory
    (``results/runs/<time>`` unless ``log_dir=...``) gets the resolved ``config.yaml``, the
    TensorBoard scalars and, with ``checkpoint.every=N``, its newest ``checkpoint.keep``
    checkpoints (``checkpoints/round_<round>/checkpoint.pt``).
    """

    overrides = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in overrides):
        print(run_main.__doc__.strip())
        return 0
    if argv is None:  # the command itself (fedsweep run: main() installs it)
        sigterm_as_ctrl_c()
    stopped: dict[str, Path] = {}
    try:
        return _run_main(overrides, stopped)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, at any moment; Ray (if started) is shut down on the way out
        again = [sys.executable, "-m", "fedsweep.run", *overrides]
        where = stopped.get("log_dir")
        kept_line = kept(where, overrides).removeprefix("; ") if where else f"nothing kept; start again with: {' '.join(again)}"
        print(f"error: stopped (Ctrl-C or SIGTERM); {kept_line}", file=sys.stderr)
        interrupt_handled()
        return 130


def _run_main(overrides: list[str], stopped: dict[str, Path]) -> int:
    show_only, given = "--cfg" in overrides, [arg for arg in overrides if arg != "--cfg"]
    try:
        overrides, config_dirs = split_config_dirs([arg for arg in overrides if arg != "--cfg"])
        cfg = to_container(compose(overrides, config_dirs=config_dirs))
        validate(cfg)
        checkpoint = resume_checkpoint(cfg)
        if not show_only:
            from fedsweep.core.device import resolve_device  # torch: imported by validate already

            check_run_dir(cfg)  # a folder that holds another run is never reused
            resolve_device(cfg["device"])  # a CUDA device this machine lacks: one line, before anything starts
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if show_only:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    try:
        check_writable(cfg["log_dir"] or RUNS_DIR, "the run's results")  # before Ray starts
        with writing(cfg["log_dir"] or RUNS_DIR):
            log_dir = stopped["log_dir"] = open_run_dir(cfg)
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from fedsweep.experiment.loop import run_experiment  # heavy imports once the config is known good

    try:
        with writing(log_dir):  # a write that fails mid-run (a full disk): one line naming the path
            final = run_experiment(cfg, log_dir=log_dir, checked=True, checkpoint=checkpoint)
    except ConfigError as err:  # found once the data is built (what a method needs of the federation)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"error: {err}{kept(log_dir, given) if isinstance(err, DiskError) else ''}", file=sys.stderr)
        return 1
    print(f"TensorBoard logs: {log_dir}   (tensorboard --logdir {log_dir})")
    from fedsweep.experiment.checkpoint import checkpoint_path, saved_rounds

    saved = saved_rounds(log_dir)
    if saved:
        newest = checkpoint_path(log_dir, saved[-1])
        print(f"Checkpoints: rounds {', '.join(map(str, saved))} kept; continue with checkpoint.resume={newest}")
    accuracy = f"test accuracy {final['accuracy/test']:.4f}, " if "accuracy/test" in final else ""
    groups = [k.removeprefix("comm/") for k in final if k.startswith("comm/") and k.count("/") == 1
              and k not in ("comm/total", "comm/messages", "comm/bytes_sent", "comm/bytes_received")]  # fmt: skip
    counts = " ".join(f"{g}={final[f'comm/{g}']:.0f}" for g in groups)
    summary = f"final {accuracy}test loss {final['loss/test']:.4f}, communications {counts}"
    if cfg["target_accuracy"] is not None:
        reached = final["target/round"] == final["target/round"]  # not NaN
        spent = " ".join(f"{g}={final[f'target/comm_{g}']:.0f}" for g in groups)
        summary += (
            f"; target {cfg['target_accuracy']} reached at round {final['target/round']:.0f} after {spent} communications"
            if reached
            else f"; target {cfg['target_accuracy']} not reached"
        )
    print(summary)
    return 0


def tune_main(argv: list[str] | None = None) -> int:
    """Sweep a config with Ray Tune: ``fedsweep tune SWEEP_FILE [key=value …]``."""
    from fedsweep.sweep.driver import RESULTS_DIR, run_sweep
    from fedsweep.sweep.sweep_file import load_sweep

    parser = argparse.ArgumentParser(prog="fedsweep tune", description="Sweep a config with Ray Tune.")
    parser.add_argument("sweep", help="sweep file, e.g. sweeps/vrcs_grid.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value Hydra overrides, after the file's own")
    parser.add_argument("--name", default=None, help="the sweep's name (results/<name>/), instead of the file's")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where results/<name>/ goes (default: results)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: the Ray `fedsweep ray start` keeps, else a new local Ray)")
    parser.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                        help="start Ray without its dashboard (~1 GB and a few seconds less; e.g. in CI)")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own config groups and options, joining Hydra's search path (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    if argv is None:  # the command itself (fedsweep tune: main() installs it)
        sigterm_as_ctrl_c()  # while the sweep runs, Tune's own graceful stop (its state saved)
    try:
        return _tune_main(args, run_sweep, load_sweep)
    except KeyboardInterrupt:  # stopped outside Tune's run (before or while Ray starts, while reporting)
        print(f"error: stopped (Ctrl-C or SIGTERM); what the sweep finished is kept, resume with: "
              f"{' '.join(tune_command(args))}", file=sys.stderr)  # fmt: skip
        interrupt_handled()
        return 130


def _tune_main(args: argparse.Namespace, run_sweep, load_sweep) -> int:
    try:
        overrides = [*args.overrides, *([search_path(args.config_dir)] if args.config_dir else [])]
        sweep = load_sweep(args.sweep, overrides=overrides, name=args.name)
        exp_dir, table = run_sweep(sweep, results_dir=Path(args.results), address=args.address, dashboard=args.dashboard)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskError as err:  # stopped with its state kept: the same command continues it
        print(f"error: {err}; once space is freed, resume with: {' '.join(tune_command(args))}", file=sys.stderr)
        return 1
    except RunError as err:  # e.g. a cluster that cannot be reached
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = int((table["status"] == "error").sum()) if len(table) else 0
    if failed:
        reasons = table.attrs.get("reasons", [])
        if len(reasons) < failed:  # crashed: Tune's tracebacks
            why = f"; Ray Tune's error files are in {exp_dir}"
        else:
            why = f": {reasons[0]}" if len(set(reasons)) == 1 else " (each one's reason on its line above)"
        print(f"error: {failed} trial(s) failed{why}", file=sys.stderr)
        return 1
    if table.attrs.get("unfinished"):  # stopped (Ctrl-C): its state is saved for the resume
        print("resume with: " + " ".join(tune_command(args)))
        interrupt_handled()
        return 130
    return 0


def tune_command(args: argparse.Namespace) -> list[str]:
    """The command that runs (or resumes) the sweep ``args`` describe."""
    again = [sys.executable, "-m", "fedsweep.tune", args.sweep, *args.overrides, "--results", args.results]
    again += [*(["--name", args.name] if args.name else []), *(["--address", args.address] if args.address else [])]
    again += [] if args.dashboard else ["--no-dashboard"]
    return again + [part for folder in args.config_dir for part in ("--config-dir", folder)]


if __name__ == "__main__":
    sys.exit(main())
