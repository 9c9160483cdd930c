"""Head-only baselines on a frozen encoder — the comparisons of the RAN paper (arXiv 2407.02716) and
NMTune (arXiv 2309.17002): cross-entropy on clean images, only the head (and a learned adapter, if
any) trains; the encoder's weights and batch-norm statistics stay as loaded (``trainable = "head"``,
see :func:`medrobust.models.set_trainable`).

* ``linear_probe``: a new linear head (``model_overrides = {"head": "linear"}``).
* ``mlp_tuning``: a new two-layer MLP head (``{"head": "mlp"}``; its hidden width is
  ``train.model.head_hidden``, 0 meaning the feature width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


class _HeadOnlyCE(TrainingMethod):
    trainable = "head"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x), y)`` on the clean batch; only the head (and an adapter, if any) is trainable."""
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().item()}


@TRAINING_METHODS.register()
class LinearProbe(_HeadOnlyCE):
    """Linear probing: a linear classifier trained with cross-entropy on frozen features."""

    name = "linear_probe"
    model_overrides = {"head": "linear"}


@TRAINING_METHODS.register()
class MLPTuning(_HeadOnlyCE):
    """MLP tuning: a two-layer MLP classifier trained with cross-entropy on frozen features."""

    name = "mlp_tuning"
    model_overrides = {"head": "mlp"}
