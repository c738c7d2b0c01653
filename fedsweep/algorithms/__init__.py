"""Federated methods as plain code over ``Weights`` and a gradient oracle (no Ray here).

A method is any object with ``init(x0, *, seed, oracle) -> MethodState`` and
``round(state, oracle) -> (state, stats)`` (:class:`Method`), built from its config
node ``method`` by ``method._target_`` (``fedsweep.experiment.components``): the classes below are
the shipped targets, and a user's own class plugs in the same way.
"""

from fedsweep.algorithms.protocols import GradientOracle, Method, MethodState, Solution
from fedsweep.algorithms.fedavg import FedAvg, FedProx
from fedsweep.algorithms.scaffold import Scaffold
from fedsweep.algorithms.feddyn import FedDyn
from fedsweep.algorithms.fednova import FedNova
from fedsweep.algorithms.fedopt import FedOpt
from fedsweep.algorithms.yogi import Yogi
from fedsweep.algorithms.server_only import ServerOnly
from fedsweep.algorithms.sliding import Sliding
from fedsweep.algorithms.vrcs import VRCS
from fedsweep.algorithms.accvrcs import AccVRCS
from fedsweep.algorithms.c_acc_extragradient import CAccExtragradient

__all__ = [
    "GradientOracle", "Method", "MethodState", "Solution", "VRCS", "AccVRCS", "CAccExtragradient", "Sliding", "FedAvg",
    "FedProx", "Scaffold", "ServerOnly", "FedDyn", "FedNova", "FedOpt", "Yogi",
]  # fmt: skip
