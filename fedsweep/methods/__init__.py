"""Federated methods as plain code over ``Weights`` and a gradient oracle (no Ray here).

A method is any object with ``init(x0, *, seed) -> MethodState`` and
``round(state, oracle) -> (state, stats)`` (:class:`Method`), built from its config
node ``method`` by ``method._target_`` (``fedsweep.components``): the classes below are
the shipped targets, and a user's own class plugs in the same way.
"""

from fedsweep.methods.base import Method, MethodState
from fedsweep.methods.fedavg import FedAvg, FedProx
from fedsweep.methods.scaffold import Scaffold
from fedsweep.methods.server_only import ServerOnly
from fedsweep.methods.sliding import Sliding
from fedsweep.methods.vrcs import VRCS

__all__ = ["Method", "MethodState", "VRCS", "Sliding", "FedAvg", "FedProx", "Scaffold", "ServerOnly"]
