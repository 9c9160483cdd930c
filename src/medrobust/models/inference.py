"""Batched prediction in eval mode: what evaluation, training and the benchmarks all need."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``x`` in eval mode, batched on the model's device; the caller's mode is restored.

    Args:
        model: a classifier.
        x: inputs (any device).
        batch_size: inputs per forward pass.

    Returns:
        ``[N, C]`` logits on the CPU.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (see :func:`predict_logits`).

    Args:
        model: a classifier (evaluated in eval mode; its mode is restored).
        x: inputs ``[N, ...]`` (any device).
        y: class indices ``[N]``.
        batch_size: inputs per forward pass.

    Returns:
        The fraction of ``x`` whose arg-max logit is ``y``, in [0, 1].
    """
    return float((predict_logits(model, x, batch_size).argmax(1) == y.cpu()).float().mean())


__all__ = ["accuracy", "predict_logits"]
