"""Standard (empirical risk minimisation) training: cross-entropy on clean images. The baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


@TRAINING_METHODS.register()
class Standard(TrainingMethod):
    """Standard training: mean cross-entropy ``CE(f(x), y)`` on the clean batch; no hyper-parameters.

    Stats: ``train_acc`` (clean).
    """

    name = "standard"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x), y)`` on the clean batch (empirical risk minimisation)."""
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().item()}
