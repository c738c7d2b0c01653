"""Client programs: what a client does in a round, apart from how clients are run.

A method hands its clients a program, in the spirit of FedJAX's ``client_init`` /
``client_step`` / ``client_final`` split (``fedjax/core/for_each_client.py``):

* ``init``: the client's own state at the start of its round (e.g. a running gradient sum),
  from the broadcast x and the method's per-client rows;
* ``step``: what one local step does on a minibatch: from the parameters and the minibatch
  gradient of the client's loss, the direction the local optimizer takes (FedProx adds
  μ(w − x), SCAFFOLD c − c_i, FedDyn −λ_i + α(w − x)) and the new state;
* ``reply``: what the client sends back, from its final parameters and state.

The engines (``fedsweep.federation.virtual_clients``) run any program unchanged: a block of
clients at once (``vmap`` over stacked parameters), one client at a time, or, for clients
whose local work is a single step of an ``affine`` program, folded into one gradient over
the union of their examples. So every tensor a program sees is stacked over the clients it
runs for (a leading axis of B clients: parameters, gradients, rows, state, steps), while x
and the shared vectors are not and broadcast against them: a program is written once, with
elementwise torch ops. The local optimizer is SGD with momentum and weight decay
(:class:`LocalSGD`), applied by the engines after ``step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedsweep.core.checks import check_keys
from fedsweep.core.errors import ConfigError

Vectors = list[Tensor]
"""One tensor per model parameter, in the model's order (stacked over clients where it says so)."""


@dataclass(frozen=True)
class LocalSGD:
    """The clients' optimizer, ``torch.optim.SGD``'s rule with a fresh momentum buffer each round:

        d = direction + weight_decay·w,   b = momentum·b + d (b = d at the first step),
        w ← w − lr·(d + momentum·b if nesterov else b) − lr·outside

    where ``outside`` is a program's part of the step kept out of the momentum buffer (as
    SCAFFOLD's correction is in the NIID-Bench code).
    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_keys(
            "method", lr=(self.lr, "> 0"), momentum=(self.momentum, "[0, 1)"), weight_decay=(self.weight_decay, ">= 0")
        )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("method.nesterov needs method.momentum > 0, got method.momentum=0")

    def effective_steps(self, steps: Tensor) -> Tensor:
        """FedNova's a_i for τ local steps of this optimizer: how far τ steps of unit
        gradients move, in units of one plain step: τ without momentum, else
        (τ − ρ(1 − ρ^τ)/(1 − ρ)) / (1 − ρ) (Wang et al. 2020, eq. for SGD with momentum ρ)."""
        rho = self.momentum
        if rho == 0:
            return steps
        return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


@dataclass(frozen=True)
class Clients:
    """What a program sees of the clients it runs for (B of them)."""

    x: Vectors  # the broadcast model (not stacked)
    shared: Mapping[str, Vectors]  # other broadcast vectors, e.g. SCAFFOLD's c (not stacked)
    rows: Mapping[str, Vectors]  # per-client vectors the method keeps, e.g. c_i (stacked: B × …)
    steps: Tensor  # (B,): local steps each client has taken so far (in ``reply``: all of them)

    def per_client(self, values: Tensor, like: Tensor) -> Tensor:
        """``values`` (B,) shaped to broadcast against a stacked tensor ``like`` (B × …)."""
        return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


@dataclass(frozen=True)
class Step:
    """One local step's result: the direction the optimizer takes (through momentum and weight
    decay), a part kept out of the momentum buffer (None: nothing), and the new state."""

    direction: Vectors
    outside: Vectors | None = None
    state: Mapping[str, Vectors] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientProgram:
    """Plain local SGD on the client's own loss, replying with its model: FedAvg's client.

    Subclass and override ``init``, ``step`` and ``reply`` for another local rule; ``epochs``,
    ``batch_size`` (None: full batch) and ``optimizer`` say how long and how it trains.
    ``affine`` promises that a client's reply after one step from x is an affine function of
    its gradient and its rows, so the engines may fold such clients into one gradient over the
    union of their examples (set it False if your reply is not).
    """

    epochs: int
    batch_size: int | None
    optimizer: LocalSGD
    affine: bool = True

    def __post_init__(self) -> None:
        check_keys("method", local_epochs=(self.epochs, "int >= 1"), batch_size=(self.batch_size, "int >= 1 or null"))

    def init(self, clients: Clients, params: Vectors) -> dict[str, Vectors]:
        """The clients' state before their first step (stacked like ``params``)."""
        return {}

    def step(self, clients: Clients, params: Vectors, grads: Vectors, state: Mapping[str, Vectors]) -> Step:
        """Direction, out-of-momentum part and new state, from the minibatch gradients ``grads``."""
        return Step(direction=grads)

    def reply(self, clients: Clients, params: Vectors, state: Mapping[str, Vectors]) -> dict[str, Vectors | Tensor]:
        """What each client sends back: vectors (stacked, like ``params``) or per-client numbers (B,)."""
        return {"model": params}


def zeros_like(params: Vectors) -> Vectors:
    return [torch.zeros_like(p) for p in params]
