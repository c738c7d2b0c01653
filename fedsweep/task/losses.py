"""Per-example losses: ``loss(outputs, y)`` gives each example's loss (config group ``loss``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, y)``: the loss of each example, shape ``(len(y),)`` (config group ``loss``)."""


def cross_entropy(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits ``(N, K)`` against labels ``(N,)``, per example."""
    return F.cross_entropy(outputs, y, reduction="none")


def squared_error(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over each example's outputs: mean_j (outputs_ij − y_ij)², per example."""
    diff = outputs.reshape(len(outputs), -1) - y.reshape(len(y), -1).to(outputs.dtype)
    return diff.square().mean(dim=1)
