"""Run fedsweep on a Ray cluster of a given shape and print what happened as JSON.

Run by tests in a subprocess, so that its Ray does not meet the test session's own:

- ``two-nodes OVERRIDES…``: two raylets of one CPU each on this machine; one run.
- ``fake-gpu SWEEP_FILE RESULTS``: one node declaring one (non-existent) GPU; a sweep
  whose clients take GPU shares (torch sees no CUDA and computes on the CPU).
- ``local``: the local Ray that a run or sweep starts (``init_ray``, dashboard on), with a
  task and an actor run; the sockets that its processes listen on.
- ``lean``: the same without the dashboard; its services, and a task run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from fedsweep.experiment.config import compose
from fedsweep.experiment.loop import run_experiment
from fedsweep.federation.runtime.ray_start import init_ray
from fedsweep.sweep.sweep_file import load_sweep
from fedsweep.sweep.driver import run_sweep

NODE = {"num_cpus": 1, "memory": 2 * 1024**3, "object_store_memory": 200 * 1024**2}


def private_tmp(prefix: str) -> str:
    """A private Ray temp folder (the cluster's address file goes there too, not to /tmp/ray)."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.environ["RAY_TMPDIR"] = tmp
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    return tmp


def two_nodes(overrides: list[str]) -> dict:
    tmp = private_tmp("fedsweep-two-nodes-")
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False, "temp_dir": tmp})
    cluster.add_node(**NODE)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = sum(n["Alive"] for n in ray.nodes())
        history: list[dict[str, float]] = []
        run_experiment(compose(overrides), log_dir=f"{tmp}/tb", report=history.append, progress=False)
        return {"nodes": nodes, "history": history}
    finally:
        ray.shutdown()
        cluster.shutdown()


def fake_gpu(sweep_file: str, results: str) -> dict:
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024**2,
        _temp_dir=private_tmp("fedsweep-fake-gpu-"),
    )
    try:
        out, _ = run_sweep(load_sweep(sweep_file), results_dir=Path(results))
        return {"results": (out / "results.csv").read_text()}
    finally:
        ray.shutdown()


class Pinger:
    def pid(self) -> int:
        return os.getpid()


def pid() -> int:
    return os.getpid()


def local() -> dict:
    from ray_processes import descendants, listening, with_in_command_line  # beside this script

    tmp = private_tmp("fedsweep-local-")
    held = socket.socket()  # Ray's default port for the dashboard agent, taken as another Ray would
    try:
        held.bind(("127.0.0.1", 52365))
    except OSError:  # another Ray of the machine holds it already
        pass
    init_ray(None, dashboard=True)
    try:
        pinger = ray.remote(Pinger).remote()  # held: the actor lives while its sockets are read
        workers = {ray.get(pinger.pid.remote()), ray.get(ray.remote(pid).remote())}
        processes = {os.getpid(), *descendants(os.getpid()), *with_in_command_line(tmp), *workers}
        agent = ray._private.worker.global_worker.node.dashboard_agent_listen_port
        commands = [Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") for p in with_in_command_line(tmp)]
        services = {Path(a).name for c in commands for a in c.split("\0")[:3] if a.endswith(".py") or "/ray/core/" in a}
        return {"node": ray.util.get_node_ip_address(), "workers": sorted(workers), "listening": listening(processes),
                "agent_port": agent, "services": sorted(services)}
    finally:
        ray.shutdown()
        held.close()
        shutil.rmtree(tmp, ignore_errors=True)


def lean() -> dict:
    """The Ray a run starts without the dashboard: its services, and a task's answer."""
    from ray_processes import with_in_command_line  # beside this script

    tmp = private_tmp("fedsweep-lean-")
    context = init_ray(None, dashboard=False)
    try:
        answer = ray.get(ray.remote(pid).remote())
        commands = [Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") for p in with_in_command_line(tmp)]
        services = {Path(a).name for c in commands for a in c.split("\0")[:3] if a.endswith(".py") or "/ray/core/" in a}
        return {"services": sorted(services), "task_pid": answer, "dashboard_url": context.dashboard_url}
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    modes = {"two-nodes": lambda: two_nodes(args), "fake-gpu": lambda: fake_gpu(*args), "local": local, "lean": lean}
    result = modes[mode]()
    print(json.dumps(result))
