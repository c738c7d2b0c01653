"""What a method may ask of the federation: gradients and the server's argmin.

Methods are plain code over this protocol and ``Weights``; they never see Ray,
actors or data. ``fedsweep.oracle.FederatedOracle`` implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from fedsweep.weights import Weights

Group = Literal["f", "g"]
GROUPS: tuple[Group, Group] = ("f", "g")


class GradientOracle(Protocol):
    """Gradients of the group losses and the server's proximal solve.

    Every returned ``Weights`` is a fresh, writable result owned by the caller.
    """

    @property
    def deterministic(self) -> bool:
        """True when every gradient is a full-data mean (no minibatch noise)."""

    def clients(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G at each point (G = f or g: the mean loss over the group's examples).

        One communication with every client of the group; all points use the
        same minibatches (drawn by ``seed``).
        """

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point: the server's f-like (G=f) or g-like (G=g) data."""

    def local_updates(
        self, group: Group, x: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int
    ) -> Weights:
        """Every client of the group runs ``epochs`` of SGD from x; their example-weighted mean."""

    def argmin(self, linear: Weights, center: Weights, theta: float, seed: int) -> tuple[Weights, float]:
        """``argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + h1(x)`` and its objective value."""
