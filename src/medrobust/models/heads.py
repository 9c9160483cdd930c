"""Classifier heads (:data:`~medrobust.models.registry.HEADS`): ``build(feature_dim, num_classes, hidden)``.

``default`` (in a :class:`~medrobust.models.ModelSpec`) keeps the backbone's own head; the
registered ones replace it: ``linear``, ``binary`` (one logit, e.g. ARFL's 2-10-10-1 MLP), ``mlp``
and ``ran`` (:mod:`medrobust.models.ran_head`).
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.models.registry import HEADS


class BinaryHead(nn.Module):
    """One logit ``z`` returned as two-class logits ``[−z/2, z/2]``: softmax gives ``sigmoid(z)`` for
    class 1, so cross-entropy on these equals binary cross-entropy on ``z`` (e.g. ARFL's 2-10-10-1 MLP).

    Args:
        in_features: the feature width ``D``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([-z / 2, z / 2], dim=1)


@HEADS.register("linear")
def linear_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """``nn.Linear(dim, num_classes)`` (``hidden`` unused).

    Args:
        dim: the feature width.
        num_classes: the number of logits.
        hidden: unused.

    Returns:
        The head.
    """
    return nn.Linear(dim, num_classes)


@HEADS.register("binary")
def binary_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """:class:`BinaryHead`.

    Args:
        dim: the feature width.
        num_classes: must be 2.
        hidden: unused.

    Returns:
        The head (one logit, returned as two-class logits).

    Raises:
        ValueError: ``num_classes`` is not 2.
    """
    if num_classes != 2:
        raise ValueError(f"the binary head needs 2 classes, got {num_classes}")
    return BinaryHead(dim)


@HEADS.register("mlp")
def mlp_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """Linear → ReLU → Linear with ``hidden`` units (0: ``dim``).

    Args:
        dim: the feature width.
        num_classes: the number of logits.
        hidden: the hidden width (0: ``dim``).

    Returns:
        The head.
    """
    hidden = hidden or dim
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


__all__ = ["BinaryHead", "binary_head", "linear_head", "mlp_head"]
