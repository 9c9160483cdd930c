"""Clean and robust metrics: accuracy, AUC, white-box robust accuracy per attack and ε."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medrobust.attacks import Attack
from medrobust.training import predict_logits


def clean_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Accuracy and ROC AUC (binary: P(class 1); multi-class: one-vs-rest macro)."""
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


def robust_accuracy(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128
) -> float:
    """Accuracy on ``attack``'s adversarial examples of every point.

    Points the model already misclassifies count as errors either way; they are attacked too, so
    the number is the plain accuracy on the adversarial set.
    """
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        x_adv = attack(xb, yb)
        correct += int((predict_logits(model, x_adv, batch_size).argmax(1) == yb.cpu()).sum())
    return correct / max(len(x), 1)
