"""Federated methods as plain code over ``Weights`` and a gradient oracle (no Ray here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsweep.errors import ConfigError
from fedsweep.methods.base import Method, MethodState
from fedsweep.methods.fedavg import FedAvg, FedProx
from fedsweep.methods.server_only import ServerOnly
from fedsweep.methods.sliding import Sliding
from fedsweep.methods.vrcs import VRCS

METHODS = ("vrcs", "sliding", "fedavg", "fedprox", "server_only")


def build_method(cfg: Mapping[str, Any]) -> Method:
    """The method named by ``cfg['method']['name']`` with its hyperparameters (validated)."""
    method = cfg["method"]
    name = method.get("name")
    if name == "vrcs":
        return VRCS(theta=cfg["theta"], p=cfg["p"], q=cfg["q"], local_participation=method.get("local_participation"))
    if name == "sliding":
        return Sliding(theta=cfg["theta"])
    if name == "server_only":
        return ServerOnly(theta=cfg["theta"])
    if name in ("fedavg", "fedprox"):
        local = dict(
            local_epochs=method["local_epochs"],
            lr=method["lr"],
            batch_size=method["batch_size"],
            participation=method.get("participation"),
        )
        return FedAvg(**local) if name == "fedavg" else FedProx(mu=method["mu"], **local)
    raise ConfigError(f"unknown method.name={name!r}; known: {', '.join(METHODS)}")


__all__ = ["METHODS", "Method", "MethodState", "build_method", "VRCS", "Sliding", "FedAvg", "FedProx", "ServerOnly"]
