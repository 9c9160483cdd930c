"""Attacking the smoothed classifier: the soundness check of a certificate.

A certificate says that no perturbation of L2 norm below ``R`` changes the smoothed classifier's
class. :func:`~medrobust.attacks.smoothed.smoothed_pgd_l2` looks for one: PGD in L2 on the *soft*
smoothed classifier ``G(x) = E_ε[softmax(f(x + ε))]``, ``ε ~ N(0, σ²I)``, maximising
``-log G(x')_y`` with the expectation over ``samples`` fresh noise draws per step (the SmoothAdv
attack of Salman et al., NeurIPS 2019, arXiv 1906.04584, Eq. (S)). :func:`soundness_check` runs it
on every point certified correctly, each within its own certified radius (times ``1 - 1e-3``), and
re-estimates the smoothed classifier there with PREDICT: a point PREDICT assigns to another class is a violation. Each such
outcome has probability at most about ``2α`` if the certificates hold (a wrong certificate or a
wrong PREDICT), so a violation is evidence of a bug, not of bad luck.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.attacks.smoothed import smoothed_pgd_l2
from medrobust.certify.smoothing import ABSTAIN, Certificate, predict


def soundness_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cert: Certificate, n: int, alpha: float,
                    steps: int = 10, samples: int = 16, max_points: int = 0, batch_size: int = 1000,
                    seed: int | None = None) -> dict[str, Any]:
    """Attack every point certified correctly within its radius; re-estimate the smoothed class there.

    Args:
        model: the base classifier.
        x: ``(N, ...)`` the certified inputs.
        y: ``(N,)`` their true classes.
        cert: :func:`~medrobust.certify.smoothing.certify_all`'s answer for ``x``.
        n: PREDICT's samples at each adversarial point.
        alpha: PREDICT's level.
        steps: the attack's steps.
        samples: the attack's noise draws per step.
        max_points: check at most this many points (the first ones); 0: all.
        batch_size: noisy copies per forward pass, for the attack and for PREDICT.
        seed: seeds the attack and PREDICT.

    Returns:
        ``{"passed", "checked", "violations", "abstained", "mean_l2", "message"}``: ``violations`` are
        the points PREDICT assigned to another class at a perturbation inside their certified radius.
    """
    ok = ((cert.prediction == y.cpu()) & (cert.radius > 0)).nonzero().squeeze(1)
    if max_points:
        ok = ok[:max_points]
    if ok.numel() == 0:
        return {"passed": True, "checked": 0, "violations": 0, "abstained": 0, "mean_l2": None,
                "message": "no point was certified correctly: nothing to check"}
    idx = ok.to(x.device)
    radius = (cert.radius[ok] * (1 - 1e-3)).to(device=x.device, dtype=x.dtype)
    x_adv = smoothed_pgd_l2(model, x[idx], y[idx], cert.sigma, radius, steps, samples, seed=seed, batch_size=batch_size)
    pred = predict(model, x_adv, cert.sigma, n, alpha, batch_size, None if seed is None else seed + 1)
    wrong = (pred != ABSTAIN) & (pred != y[idx].cpu())
    l2 = (x_adv - x[idx]).flatten(1).norm(dim=1)
    violations, abstained = int(wrong.sum()), int((pred == ABSTAIN).sum())
    message = (f"{len(ok)} points certified correctly, each attacked within its radius (L2 PGD on the smoothed "
               f"classifier, {steps} steps × {samples} noise draws): "
               + ("none changed class" if not violations else f"{violations} changed class — the certificates are "
                                                              "unsound (a bug in the base model's noise handling "
                                                              "or the certifier)")
               + f", {abstained} abstained")
    return {"passed": violations == 0, "checked": int(len(ok)), "violations": violations, "abstained": abstained,
            "mean_l2": float(l2.mean()), "message": message}


__all__ = ["soundness_check"]
