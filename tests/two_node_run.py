"""Run a short experiment on a two-node Ray cluster (two raylets on this machine); print its metrics.

Run by tests/test_two_nodes.py in a subprocess, so that its cluster does not meet
the test session's own Ray.
"""

from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from fedsweep.config import compose
from fedsweep.experiment import run_experiment

NODE = {"num_cpus": 1, "memory": 2 * 1024**3, "object_store_memory": 200 * 1024**2}


def main(overrides: list[str]) -> None:
    tmp = tempfile.mkdtemp(prefix="fedsweep-two-nodes-")
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False, "temp_dir": tmp})
    cluster.add_node(**NODE)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = sum(n["Alive"] for n in ray.nodes())
        history: list[dict[str, float]] = []
        run_experiment(compose(overrides), log_dir=f"{tmp}/tb", report=history.append, progress=False)
        print(json.dumps({"nodes": nodes, "history": history}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
