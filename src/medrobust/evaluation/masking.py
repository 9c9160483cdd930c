"""Gradient-masking checks: signs that a robustness number comes from broken gradients, not from
robustness (Athalye et al., "Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses
to Adversarial Examples", ICML 2018, arXiv 1802.00420; Carlini et al., "On Evaluating Adversarial
Robustness", 2019, arXiv 1902.06705; the flags of Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", 2020, arXiv 2003.01690).

Each check has a name, a pass/fail result and a message. They appear in ``metrics.json`` and
``report.md``, and ``register.require_masking_checks`` makes them a gate.

Each check and when it fails:

* ``deterministic_outputs`` — two forward passes in eval mode differ (randomised defence);
* ``logits_not_probabilities`` — every output row is non-negative and sums to 1 (a softmax at the end);
* ``nonzero_input_gradients`` — more than 10% of points have an all-zero input gradient;
* ``whitebox_beats_blackbox`` — Square (black box) finds more adversarials than the strongest
  white-box attack at that ε (beyond ``tolerance``);
* ``accuracy_falls_with_eps`` — robust accuracy rises with ε for some attack (beyond ``tolerance``);
* ``large_eps_breaks_model`` — PGD-50 from the data (no random start) at a huge L∞ ε (default 1.0:
  any image is reachable) leaves accuracy above ``large_eps_max_accuracy``.

Settings (``evaluate.masking``, :class:`MaskingConfig`): ``enabled``; ``n_points`` (the checks use the first 128 test
points by default); ``large_eps`` (1.0) and ``large_eps_max_accuracy`` (0.1); ``tolerance`` (0.03, the accuracy
slack of ``whitebox_beats_blackbox`` and ``accuracy_falls_with_eps``); ``square_queries`` (300).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field

from medrobust.attacks import PGD, eval_mode, get_attack
from medrobust.config import Eps, StrictModel, parse_eps
from medrobust.evaluation.metrics import evaluate_attack


class MaskingConfig(StrictModel):
    """``evaluate.masking``: the gradient-masking checks."""

    enabled: bool = True
    n_points: int = Field(128, ge=8, le=1_000_000)
    large_eps: Eps = 1.0                                    # an L∞ budget that must drive accuracy to about 0
    large_eps_max_accuracy: float = Field(0.1, ge=0.0, le=1.0)
    tolerance: float = Field(0.03, ge=0.0, le=1.0)
    square_queries: int = Field(300, ge=1, le=1_000_000)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one gradient-masking check.

    Attributes:
        name: the check's name (see the module docstring).
        passed: whether the check found no sign of masking.
        message: a readable explanation, with the advice to follow when it failed.
        value: the number the check compared, if any (e.g. the accuracy at the large ε).
    """

    name: str
    passed: bool
    message: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (an entry of ``metrics.json``'s ``masking_checks``)."""
        return asdict(self)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_deterministic(model: nn.Module, x: torch.Tensor) -> CheckResult:
    """``deterministic_outputs``: two forward passes in eval mode agree.

    Args:
        model: the classifier (run in eval mode; its mode is restored).
        x: a batch of images on the model's device.

    Returns:
        Passed when the outputs differ by at most ``1e-5 · max(1, max |logit|)``; ``value`` is the
        largest absolute difference.
    """
    with eval_mode(model), torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max())
    ok = diff <= 1e-5 * max(1.0, float(a.abs().max()))
    return CheckResult("deterministic_outputs", ok, "repeated forward passes agree" if ok else
                       f"outputs differ by up to {diff:.3g} across repeated passes: a randomised model needs "
                       "EOT attacks before its robustness can be trusted", diff)


def check_logits(model: nn.Module, x: torch.Tensor) -> CheckResult:
    """``logits_not_probabilities``: the model returns logits, not softmax probabilities.

    Args:
        model: the classifier (run in eval mode; its mode is restored).
        x: a batch of images on the model's device.

    Returns:
        Failed when every output is non-negative and every row sums to 1 (within 1e-4); no ``value``.
    """
    with eval_mode(model), torch.no_grad():
        z = model(x)
    looks_like_probs = bool((z >= 0).all()) and bool(torch.allclose(z.sum(1), torch.ones(len(z), device=z.device),
                                                                    atol=1e-4))
    return CheckResult("logits_not_probabilities", not looks_like_probs,
                       "outputs are logits" if not looks_like_probs else
                       "outputs are non-negative and sum to 1: the model ends in a softmax, so attacks on the "
                       "cross-entropy of probabilities see vanishing gradients; return logits")


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """``nonzero_input_gradients``: the cross-entropy has a non-zero input gradient at most points.

    Args:
        model: the classifier (run in eval mode; its mode is restored; parameter ``.grad`` untouched).
        x: a batch of images on the model's device.
        y: ``(N,)`` their true classes.

    Returns:
        Passed when at most 10% of the points have an all-zero gradient; ``value`` is that fraction.
    """
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    ok = zero <= 0.1
    return CheckResult("nonzero_input_gradients", ok, f"{zero:.0%} of points have an all-zero input gradient"
                       + ("" if ok else ": a non-differentiable or saturating input path masks gradients (use BPDA)"),
                       zero)


def check_blackbox(whitebox_best: float, square: float, tol: float, eps_label: str) -> CheckResult:
    """``whitebox_beats_blackbox``: the black box does not beat the best white-box attack.

    Args:
        whitebox_best: the lowest white-box robust accuracy at the ε.
        square: the robust accuracy under Square at the same ε, on the same points.
        tol: the accuracy slack allowed.
        eps_label: the ε as written in ``metrics.json`` (e.g. ``"8/255"``), for the message.

    Returns:
        Passed when ``square >= whitebox_best - tol``; ``value`` is ``whitebox_best - square``.
    """
    ok = square >= whitebox_best - tol
    return CheckResult("whitebox_beats_blackbox", ok,
                       f"at ε={eps_label}: best white-box robust accuracy {whitebox_best:.3f}, Square {square:.3f}"
                       + ("" if ok else ": a black box beats the gradients, so the gradients are not trustworthy"),
                       whitebox_best - square)


def check_monotone(whitebox: dict[str, dict[str, float]], tol: float) -> CheckResult:
    """``accuracy_falls_with_eps``: no attack's robust accuracy rises from one ε to the next larger one.

    Args:
        whitebox: ``{attack key: {ε label: robust accuracy}}`` (``metrics.json``'s ``whitebox``).
        tol: the largest rise allowed.

    Returns:
        Passed when the largest rise between consecutive epsilons is at most ``tol``; ``value`` is
        that rise (0 when accuracy never rises).

    Raises:
        ConfigError: an ε label that is not a number or fraction.
    """
    worst, where = 0.0, ""
    for attack, by_eps in whitebox.items():
        pts = sorted((parse_eps(e), a) for e, a in by_eps.items())
        for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
            if a1 - a0 > worst:
                worst, where = a1 - a0, f"{attack}: {a0:.3f} at ε={e0:.4g} -> {a1:.3f} at ε={e1:.4g}"
    ok = worst <= tol
    return CheckResult("accuracy_falls_with_eps", ok, "robust accuracy never rises with ε" if worst == 0 else
                       f"largest rise with ε: {where}" + ("" if ok else " (beyond the tolerance)"), worst)


def check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, max_acc: float) -> CheckResult:
    """``large_eps_breaks_model``: PGD-50 from the clean images (no random start) at a huge ε.

    No random start on purpose: at ε≈1 a uniform start replaces the image by noise, where a
    confident model's cross-entropy saturates — measured here, a PGD-AT model kept 45% accuracy
    from such starts and 0% from the data. That is an artefact of the start, not masking.

    Args:
        model: the classifier.
        x: images in [0, 1] (any device; batches are moved to the model's).
        y: ``(N,)`` their true classes.
        eps: the L∞ budget (fraction of the [0, 1] range); the step size is ``eps / 20``.
        max_acc: the highest robust accuracy allowed.

    Returns:
        Passed when the robust accuracy is at most ``max_acc``; ``value`` is that accuracy.
    """
    attack = PGD(model, eps=eps, steps=50, step_size=eps / 20, random_start=False)
    acc = evaluate_attack(model, attack, x, y).accuracy
    ok = acc <= max_acc
    return CheckResult("large_eps_breaks_model", ok, f"PGD-50 at L∞ ε={eps:g} leaves accuracy {acc:.3f}"
                       + ("" if ok else f" > {max_acc:.2f}: an unbounded attack should reach ~0, so gradients are "
                          "masked or the attack is broken"), acc)


def run_masking_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, whitebox: dict[str, dict[str, float]],
    cfg: MaskingConfig, gate_eps: float, eps_label: str, seed: int = 0,
) -> list[CheckResult]:
    """Every check on the first ``cfg.n_points`` points (``whitebox``: attack -> ε label -> accuracy).

    ``whitebox_beats_blackbox`` runs only when ``whitebox`` has an L∞ attack at ``eps_label``. Its
    white-box number is the lower of a PGD-20 run on the subset and, when the subset is every point,
    the lowest L∞ accuracy in ``whitebox`` at ``eps_label``; Square runs on the same subset.

    Args:
        model: the classifier (on its device).
        x: the test images in [0, 1].
        y: ``(N,)`` their true classes.
        whitebox: ``{attack key: {ε label: robust accuracy}}`` of the evaluation.
        cfg: ``evaluate.masking``.
        gate_eps: the L∞ budget of the black-box comparison (the gate's ε).
        eps_label: ``gate_eps`` as labelled in ``whitebox`` (:func:`medrobust.config.eps_label`).
        seed: seed of the PGD-20 and Square runs.

    Returns:
        The results, in the order deterministic, logits, gradients, black box (if run), monotone,
        large ε.
    """
    device = _device(model)
    xs, ys = x[: cfg.n_points].to(device), y[: cfg.n_points].to(device)
    checks = [check_deterministic(model, xs), check_logits(model, xs), check_gradients(model, xs, ys)]
    linf_at_gate = [by_eps[eps_label] for key, by_eps in whitebox.items()
                    if key.endswith("_linf") and eps_label in by_eps]
    if linf_at_gate:
        square = get_attack("square", model, eps=gate_eps, n_queries=cfg.square_queries, seed=seed)
        # compare on the same points: re-run the strongest white-box number on this subset too
        sq = evaluate_attack(model, square, xs, ys).accuracy
        wb = min(evaluate_attack(model, PGD(model, eps=gate_eps, steps=20, seed=seed), xs, ys).accuracy,
                 min(linf_at_gate) if len(xs) == len(x) else 1.0)
        checks.append(check_blackbox(wb, sq, cfg.tolerance, eps_label))
    checks.append(check_monotone(whitebox, cfg.tolerance))
    checks.append(check_large_eps(model, xs, ys, cfg.large_eps, cfg.large_eps_max_accuracy))
    return checks
