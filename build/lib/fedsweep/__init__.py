"""fedsweep: run and sweep federated-learning experiments on Ray."""

from fedsweep.errors import ConfigError
from fedsweep.weights import Weights

__all__ = ["ConfigError", "Weights"]
