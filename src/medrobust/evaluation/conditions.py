"""The test split under every condition of the evaluation, as per-point predictions.

A :class:`Condition` is the model's logits on every test image under one condition — clean, one
attack at one ε, the worst case over the attack suite at one ε, one natural shift at one severity,
a transfer set — plus, for attacks, which points survived. Every figure of ``metrics.json`` is
computed from these arrays (:mod:`medrobust.evaluation.clinical`), so all conditions share one
definition of each metric and one set of bootstrap resamples.

**The worst case over the suite** (:func:`worst_case`), as AutoAttack counts: a point is robust at
ε only if it survives every attack of the suite at that norm and ε; its worst-case prediction is
the one, among the attacks' adversarial images, that gives its true class the lowest probability.
The worst-case robust accuracy is therefore never above any single attack's, point by point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medrobust.attacks import get_attack
from medrobust.attacks.spec import AttackSpec, from_spec
from medrobust.evaluation.metrics import evaluate_attack
from medrobust.evaluation.shifts import SHIFTS
from medrobust.models.inference import predict_logits


@dataclass(frozen=True)
class Condition:
    """The model on the test split under one condition.

    Attributes:
        logits: ``[N, C]`` logits (for an attack: of each point's adversarial image).
        robust: ``[N]`` booleans, attacks only: clean-correct and never fooled.
        clean_correct: ``[N]`` booleans, attacks only: the points that were correct before the attack.
        seconds: wall-clock time to produce the condition.
    """

    logits: np.ndarray
    robust: np.ndarray | None = None
    clean_correct: np.ndarray | None = None
    seconds: float = 0.0


def clean(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> Condition:
    """The clean test images.

    Args:
        model: the classifier.
        x: the test images.
        batch_size: images per forward pass.

    Returns:
        The condition (logits only).
    """
    start = time.perf_counter()
    logits = predict_logits(model, x, batch_size).numpy()
    return Condition(logits, seconds=time.perf_counter() - start)


def attacked(model: nn.Module, spec: AttackSpec, eps: float, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             early_stop: bool, seed: int) -> Condition:
    """One attack of the suite at one ε (white box, on the model itself).

    Args:
        model: the classifier.
        spec: the suite entry.
        eps: one of its epsilons.
        x, y: the test images and labels.
        batch_size: points per attack batch.
        early_stop: attack only clean-correct points, each until fooled (same robust points, faster).
        seed: the attacks' random starts.
    """
    clean_correct = (predict_logits(model, x, batch_size).argmax(1) == y).numpy()
    res = evaluate_attack(model, from_spec(spec, model, eps, seed=seed), x, y, batch_size, early_stop=early_stop)
    return Condition(res.logits.numpy(), res.robust.numpy(), clean_correct, res.seconds)


def true_class_probability(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``softmax(logits)[i, y_i]`` for every point.

    Args:
        logits: ``[N, C]`` logits.
        y: ``[N]`` true classes.

    Returns:
        ``[N]`` probabilities of the true class.
    """
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p[np.arange(len(y)), y]


def worst_case(conditions: list[Condition], y: np.ndarray) -> Condition:
    """The worst case per point over attacks at one norm and ε.

    Args:
        conditions: the attacks' conditions (each with ``robust``), all on the same points.
        y: ``[N]`` true classes.

    Returns:
        A condition robust only where every attack left the point robust, whose logits are, per point,
        those of the attack that gives the true class the lowest probability.

    Raises:
        ValueError: no conditions, or a condition without ``robust``.
    """
    if not conditions or any(c.robust is None for c in conditions):
        raise ValueError("worst_case needs at least one attack condition (with its robust points)")
    p_true = np.stack([true_class_probability(c.logits, y) for c in conditions])  # [A, N]
    pick = p_true.argmin(0)
    robust = np.logical_and.reduce([c.robust for c in conditions])
    logits = np.stack([c.logits for c in conditions])[pick, np.arange(len(y))]
    fooled = ~robust
    # a point some attack fooled must be predicted wrong in the worst case: take a fooling attack's logits
    for i in np.flatnonzero(fooled & (logits.argmax(1) == y)):
        for a, c in enumerate(conditions):
            if not c.robust[i]:
                logits[i] = c.logits[i]
                break
    return Condition(logits, robust, conditions[0].clean_correct, sum(c.seconds for c in conditions))


def shifted(model: nn.Module, x: torch.Tensor, name: str, severity: int, seed: int, batch_size: int) -> Condition:
    """One natural shift at one severity, its noise drawn as :func:`~medrobust.evaluation.shifts.shift_accuracy`
    draws it (a CPU generator seeded with ``seed``, consumed batch by batch).

    Args:
        model: the classifier.
        x: the test images.
        name: a shift of :data:`~medrobust.evaluation.shifts.SHIFTS`.
        severity: 1 (mild) .. 5 (severe).
        seed: seeds the shift's noise.
        batch_size: images per batch.

    Returns:
        The condition (logits of the shifted images).
    """
    start = time.perf_counter()
    fn = SHIFTS[name]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(model(fn(x[i : i + batch_size].to(device), severity, gen)).cpu())
    finally:
        model.train(was_training)
    return Condition(torch.cat(out).numpy(), seconds=time.perf_counter() - start)


def shifted_images(x: torch.Tensor, name: str, severity: int, seed: int, batch_size: int) -> torch.Tensor:
    """The shifted images themselves (same noise as :func:`shifted`), on the CPU.

    Args:
        x: the test images.
        name: a shift of :data:`~medrobust.evaluation.shifts.SHIFTS`.
        severity: 1 (mild) .. 5 (severe).
        seed: seeds the shift's noise.
        batch_size: images per batch (the noise is drawn batch by batch, as :func:`shifted` does).

    Returns:
        The shifted images, same shape as ``x``.
    """
    fn = SHIFTS[name]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.cat([fn(x[i : i + batch_size], severity, gen) for i in range(0, len(x), batch_size)])


def targeted_to(model: nn.Module, spec: AttackSpec, eps: float, x: torch.Tensor, target: int, batch_size: int,
                seed: int) -> np.ndarray:
    """Logits after a targeted version of ``spec`` pushes every image of ``x`` towards class ``target``.

    Binary tasks use it for the clinically dangerous direction (a finding made to look normal).

    Args:
        model: the classifier.
        spec: the suite entry (its options are kept; ``targeted=True`` is added).
        eps: the budget.
        x: the images to push.
        target: the class to push them towards.
        batch_size: images per batch.
        seed: the attack's random start.

    Returns:
        ``[N, C]`` logits of the adversarial images.
    """
    kw = {"eps": eps, "norm": spec.norm, "targeted": True, "seed": seed}
    for key in ("steps", "step_size", "random_start", "n_restarts", "n_queries"):
        if getattr(spec, key) is not None:
            kw[key] = getattr(spec, key)
    device = next(model.parameters()).device
    attack = get_attack(spec.name, model, **kw)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        out.append(predict_logits(model, attack(xb, torch.full((len(xb),), target, device=device)), batch_size))
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


__all__ = ["Condition", "attacked", "clean", "shifted", "shifted_images", "targeted_to", "true_class_probability",
           "worst_case"]
