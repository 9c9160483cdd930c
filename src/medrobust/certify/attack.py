"""Attacking the smoothed classifier: the soundness check of a certificate.

A certificate says that no perturbation of L2 norm below ``R`` changes the smoothed classifier's
class. :func:`smoothed_pgd_l2` looks for one: PGD in L2 on the *soft* smoothed classifier
``G(x) = E_ε[softmax(f(x + ε))]``, ``ε ~ N(0, σ²I)``, maximising ``-log G(x')_y`` with the
expectation over ``samples`` noise draws per step (the SmoothAdv attack of Salman et al.,
NeurIPS 2019, arXiv 1906.04584, Eq. (S)). :func:`soundness_check` runs it on every point certified
correctly, each within its own certified radius (times ``1 - 1e-3``), and re-estimates the smoothed
classifier there with PREDICT: a point PREDICT assigns to another class is a violation. Each such
outcome has probability at most about ``2α`` if the certificates hold (a wrong certificate or a
wrong PREDICT), so a violation is evidence of a bug, not of bad luck.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.base import eval_mode, fast_copy
from medrobust.attacks.pgdl2 import l2_norms
from medrobust.certify.smoothing import ABSTAIN, Certificate, predict


def smoothed_pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, eps: torch.Tensor | float,
                    steps: int = 10, samples: int = 16, step_size: float | None = None,
                    seed: int | None = None) -> torch.Tensor:
    """PGD in L2 against the soft smoothed classifier (see the module docstring).

    Args:
        model: the base classifier; left untouched (attacked through a frozen fast copy).
        x: ``(N, ...)`` inputs in [0, 1].
        y: ``(N,)`` their classes.
        sigma: the smoothing noise σ.
        eps: the L2 radius, one for all or ``(N,)`` per point.
        steps: PGD steps.
        samples: noise draws per point and step (the expectation's Monte Carlo size).
        step_size: the L2 step; None: ``2.5 · eps / steps`` per point.
        seed: seeds the noise; None uses the global RNG.

    Returns:
        ``(N, ...)`` adversarial inputs in [0, 1], each within its ``eps`` of ``x`` in L2.
    """
    x, y = x.detach(), y.detach()
    shape = (-1,) + (1,) * (x.dim() - 1)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(len(x)).reshape(shape)
    step = 2.5 * eps_t / steps if step_size is None else torch.full_like(eps_t, step_size)
    g = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
    with eval_mode(model):
        fast = fast_copy(model, x[:8]) if len(x) else model
        x_adv = x.clone()
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            noise = sigma * torch.randn((samples, *x.shape), generator=g, device=x.device, dtype=x.dtype)
            logits = fast((x_adv.unsqueeze(0) + noise).flatten(0, 1))
            probs = F.softmax(logits, dim=1).view(samples, len(x), -1).mean(0)
            loss = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step * grad / (l2_norms(grad) + 1e-12)
            delta = x_adv - x
            delta = delta * torch.clamp(eps_t / (l2_norms(delta) + 1e-12), max=1.0)
            x_adv = torch.clamp(x + delta, 0.0, 1.0)
    return x_adv.detach()


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
        batch_size: noisy copies per forward pass for PREDICT.
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
    x_adv = smoothed_pgd_l2(model, x[idx], y[idx], cert.sigma, radius, steps, samples, seed=seed)
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


__all__ = ["smoothed_pgd_l2", "soundness_check"]
