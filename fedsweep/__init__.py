"""fedsweep: run and sweep federated-learning experiments on Ray.

``fedsweep.run_experiment(...)`` and ``fedsweep.run_sweep(...)`` are the Python API
(``fedsweep.api``); ``fedsweep.Weights`` is a model's named tensors as one value.
"""

from fedsweep.core.errors import ConfigError

__all__ = ["ConfigError", "Weights", "run_experiment", "run_sweep"]


def __getattr__(name: str):  # heavy imports only when used: torch for Weights, Hydra and pandas for the API
    if name == "Weights":
        from fedsweep.core.weights import Weights

        return Weights
    if name in ("run_experiment", "run_sweep"):
        from fedsweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsweep' has no attribute {name!r}")
