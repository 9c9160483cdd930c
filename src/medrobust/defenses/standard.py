"""Standard (empirical risk minimisation) training: cross-entropy on clean images. The baseline."""

from __future__ import annotations

import torch
from torch import nn

from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


@TRAINING_METHODS.register()
class Standard(TrainingMethod):
    """Standard training: mean cross-entropy ``CE(f(x), y)`` on the clean batch; no hyper-parameters.

    Stats: ``train_acc`` (clean).
    """

    name = "standard"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x), y)`` on the clean batch (empirical risk minimisation): the base class's clean warm-up loss."""
        return self.warmup_loss(model, x, y)
