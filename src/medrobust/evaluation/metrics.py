"""Clean and robust metrics: accuracy, AUC, white-box robust accuracy per attack and ε."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medrobust.attacks import Attack
from medrobust.models.inference import predict_logits


def clean_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Accuracy and ROC AUC (binary: P(class 1); multi-class: one-vs-rest macro).

    Args:
        model: the classifier (run in eval mode, batched on its device; its mode is restored).
        x: images in [0, 1].
        y: ``(N,)`` integer labels, on the CPU.
        batch_size: images per forward pass.

    Returns:
        ``{"accuracy": ..., "auc": ...}``; the AUC is NaN when ``y`` holds a single class.
    """
    from sklearn.metrics import roc_auc_score  # scikit-learn loads in ~2 s: only when an AUC is computed

    logits = predict_logits(model, x, batch_size)
    probs = torch.softmax(logits, dim=1).numpy()
    y_np = y.numpy()
    acc = float((logits.argmax(1) == y).float().mean())
    auc = float("nan")
    if len(np.unique(y_np)) > 1:
        if probs.shape[1] == 2:
            auc = float(roc_auc_score(y_np, probs[:, 1]))
        else:
            auc = float(roc_auc_score(y_np, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    return {"accuracy": acc, "auc": auc}


@dataclass(frozen=True)
class RobustResult:
    """Robust accuracy of one attack: a point is robust iff it is classified correctly and no
    iterate of the attack fools the model.

    Attributes:
        accuracy: the fraction of robust points (0.0 for an empty set).
        robust: ``(N,)`` bool on the CPU, True for each robust point.
        seconds: wall-clock time of the evaluation.
        attacked: the number of points the attack actually ran on.
        logits: ``(N, C)`` logits on the CPU of each point's adversarial image (the first iterate that
            fooled the model, else the last; an unattacked point's clean image).
    """

    accuracy: float
    robust: torch.Tensor  # bool per point
    seconds: float
    attacked: int  # points the attack actually ran on
    logits: torch.Tensor | None = None


def evaluate_attack(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
    early_stop: bool = True,
) -> RobustResult:
    """Robust accuracy of ``model`` under ``attack``.

    With ``early_stop`` only points still classified correctly are attacked, and each leaves the
    attack as soon as it is fooled; without it every point runs every step. Both give the same
    robust points (see :meth:`medrobust.attacks.base.Attack.run`); only the time differs.

    Args:
        model: the classifier (on its device).
        attack: an attack built on ``model``.
        x: images in [0, 1] (any device; batches are moved to the model's).
        y: ``(N,)`` integer labels.
        batch_size: points per attack batch.
        early_stop: attack only correctly classified points and stop each once fooled.

    Returns:
        The robust accuracy, the robust points, the time taken and the number of points attacked.
    """
    device = next(model.parameters()).device
    start = time.perf_counter()
    robust = torch.zeros(len(x), dtype=torch.bool)
    logits = []
    attacked = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        correct = predict_logits(model, xb, batch_size).argmax(1) == yb.cpu()
        active = correct.to(device)
        attacked += int(active.sum()) if early_stop else len(xb)
        x_adv, fooled = attack.run(xb, yb, active=active, early_stop=early_stop)
        robust[i : i + batch_size] = correct & ~fooled.cpu()
        logits.append(predict_logits(model, x_adv, batch_size))
    return RobustResult(float(robust.float().mean()) if len(x) else 0.0, robust,
                        time.perf_counter() - start, attacked, torch.cat(logits) if logits else None)

