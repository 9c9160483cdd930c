"""PGD in L2 on the soft smoothed classifier — the attack of SmoothAdv (Salman et al., NeurIPS 2019,
arXiv 1906.04584, Sec. 3 and Eq. (S)).

Randomized smoothing (Cohen et al. 2019) classifies ``x`` by the class the base model ``f`` gives
most often under Gaussian noise. Its soft version ``G(x) = E_ε[softmax(f(x + ε))]``, ``ε ~ N(0, σ²I)``,
is differentiable; :func:`smoothed_pgd_l2` maximises ``-log G(x')_y`` over ``‖x' − x‖₂ ≤ ε`` with
the expectation estimated from ``samples`` noise draws per point. Two uses:

* the soundness check of a certificate (:func:`medrobust.certify.soundness_check`): fresh noise at
  every step, on a frozen fast copy of the model;
* SmoothAdv training (:mod:`medrobust.defenses.smooth_adv`): one draw of noise reused at every step
  and then in the training loss (Salman et al.'s "multi-noise" variant), on the model itself.

Not a registered :class:`~medrobust.attacks.base.Attack`: it attacks the smoothed classifier, not
the model, and the evaluation suite's attacks attack the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.base import eval_mode, fast_copy
from medrobust.attacks.pgdl2 import l2_norms


def smoothed_pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, eps: torch.Tensor | float,
                    steps: int = 10, samples: int = 16, step_size: float | None = None,
                    seed: int | None = None, batch_size: int = 1000, noise: torch.Tensor | None = None,
                    fast: bool = True) -> torch.Tensor:
    """PGD in L2 against the soft smoothed classifier (see the module docstring).

    Args:
        model: the base classifier; run in eval mode (batch-norm statistics untouched) and restored.
        x: ``(N, ...)`` inputs in [0, 1].
        y: ``(N,)`` their classes.
        sigma: the smoothing noise σ.
        eps: the L2 radius, one for all or ``(N,)`` per point.
        steps: PGD steps.
        samples: noise draws per point and step (the expectation's Monte Carlo size).
        step_size: the L2 step; None: ``2.5 · eps / steps`` per point.
        seed: seeds the noise; None uses the global RNG.
        batch_size: noisy copies per forward and backward pass: the points are attacked in chunks of
            ``max(1, batch_size // samples)``, so the memory stays bounded however many are checked.
        noise: ``(samples, N, ...)`` noise to reuse at every step (``sigma`` and ``seed`` then draw
            nothing); None: fresh noise at every step.
        fast: attack :func:`~medrobust.attacks.base.fast_copy` of the model (batch norm folded; worth it
            for a model attacked many times, not for one that changes every training step).

    Returns:
        ``(N, ...)`` adversarial inputs in [0, 1], each within its ``eps`` of ``x`` in L2.
    """
    x, y = x.detach(), y.detach()
    shape = (-1,) + (1,) * (x.dim() - 1)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(len(x)).reshape(shape)
    step = 2.5 * eps_t / steps if step_size is None else torch.full_like(eps_t, step_size)
    samples = samples if noise is None else len(noise)
    g = None if seed is None or noise is not None else torch.Generator(device=x.device).manual_seed(int(seed))
    per = max(1, batch_size // samples)
    with eval_mode(model):
        net = fast_copy(model, x[:8]) if fast and len(x) else model
        chunks = []
        for i in range(0, len(x), per):
            part = slice(i, i + per)
            draws = (lambda n=len(x[part]): sigma * torch.randn((samples, n, *x.shape[1:]), generator=g,
                                                                device=x.device, dtype=x.dtype)) \
                if noise is None else (lambda fixed=noise[:, part].detach(): fixed)
            chunks.append(_pgd(net, x[part], y[part], eps_t[part], step[part], steps, draws))
    return torch.cat(chunks) if chunks else x.clone()


def _pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_t: torch.Tensor, step: torch.Tensor, steps: int,
         draws) -> torch.Tensor:
    """One chunk of :func:`smoothed_pgd_l2`; ``draws()`` gives the ``(samples, len(x), ...)`` noise of a step."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        noise = draws()
        logits = net((x_adv.unsqueeze(0) + noise).flatten(0, 1))
        probs = F.softmax(logits, dim=1).view(len(noise), len(x), -1).mean(0)
        loss = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad / (l2_norms(grad) + 1e-12)
        delta = x_adv - x
        delta = delta * torch.clamp(eps_t / (l2_norms(delta) + 1e-12), max=1.0)
        x_adv = torch.clamp(x + delta, 0.0, 1.0)
    return x_adv.detach()


__all__ = ["smoothed_pgd_l2"]
