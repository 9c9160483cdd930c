"""Which epoch's weights to keep: scores for :func:`medrobust.training.train_model`'s ``select``.

Adversarially trained networks overfit robustly (Rice et al., 2020): robust accuracy on held-out
data peaks and then falls while clean accuracy keeps rising. So train keeps the epoch with the best
robust accuracy on the validation split, under a cheap PGD at the gate's ε, not the last epoch.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medrobust.attacks import get_attack
from medrobust.data.shards import ArraySplit
from medrobust.models.inference import accuracy, predict_logits


def robust_score(val: ArraySplit, norm: str, eps: float, steps: int, max_images: int, seed: int,
                 batch_size: int = 128) -> Callable[[nn.Module], float]:
    """Robust accuracy on (the first ``max_images`` of) ``val`` under PGD of ``norm`` at ``eps``.

    Args:
        val: the validation split.
        norm: ``linf`` or ``l2`` (the gate attack's norm).
        eps: the gate ε.
        steps: PGD steps (few: this runs after every epoch).
        max_images: at most this many validation images.
        seed: seeds PGD's random start, so every epoch is scored on the same draw.
        batch_size: images per attack batch.

    Returns:
        ``score(model) -> float`` in [0, 1].
    """
    x, y = val.x[:max_images], val.y[:max_images]

    def score(model: nn.Module) -> float:
        device = next(model.parameters()).device
        attack = get_attack("pgd" if norm == "linf" else "pgdl2", model, norm=norm, eps=eps, steps=steps, seed=seed)
        correct = 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            adv = attack(xb, yb)
            correct += int((predict_logits(model, adv).argmax(1) == yb.cpu()).sum())
        return correct / max(len(x), 1)

    return score


def clean_score(val: ArraySplit) -> Callable[[nn.Module], float]:
    """Clean accuracy on ``val``."""
    return lambda model: accuracy(model, val.x, val.y)


__all__ = ["clean_score", "robust_score"]
