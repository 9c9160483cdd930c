"""PGD (L∞) — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
arXiv 1706.06083.

Projected sign-gradient ascent on the cross-entropy inside the L∞ ball. Order of operations as in
torchattacks 3.5.1's ``PGD``: step ``x + α·sign(∇)``, project ``δ = clip(x - x₀, -ε, ε)``, clip
``x₀ + δ`` to [0, 1]. The random start is uniform in the ε-box, then clipped to [0, 1].

Defaults: ``eps=8/255``, ``steps=10``, ``step_size=2.5·ε/steps`` (Madry et al.; = 2/255 at the
default ε, torchattacks' default α), ``random_start=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import ATTACKS, IterativeAttack


@ATTACKS.register()
class PGD(IterativeAttack):
    """PGD in the L∞ ball. See the module docstring.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the L∞ budget (fraction of the [0, 1] range); default 8/255.
        norm: ``"linf"``.
        steps: iterations (>= 1); default 10.
        step_size: the step α; ``None`` (default): ``2.5 · eps / steps``.
        random_start: start uniformly in the ε-box (clipped to [0, 1]); default True.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: seed for the random start; ``None`` uses the global RNG.

    Raises:
        ValueError: ``steps < 1``, a norm other than ``"linf"`` or ``eps < 0``.
    """

    name = "pgd"
    norms = ("linf",)

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, random_start: bool = True, targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps, norm, steps, step_size, random_start, targeted, seed)

    def init_adv(self, images: torch.Tensor) -> torch.Tensor:
        """``clip_[0,1](x + U(-ε, ε))`` with ``random_start``, else a copy of ``images``."""
        if not self.random_start:
            return images.clone()
        noise = torch.rand(images.shape, generator=self.generator(images.device), device=images.device,
                           dtype=images.dtype)
        return torch.clamp(images + (2 * noise - 1) * self.eps, 0.0, 1.0)

    def step(self, adv, images, labels, state):
        """``x + α·sign(∇)``, then ``δ = clip(x - x₀, -ε, ε)`` and ``clip_[0,1](x₀ + δ)``.

        Args:
            adv: ``(n, C, H, W)`` current iterates.
            images: ``(n, C, H, W)`` clean images (the centre of the ball).
            labels: ``(n,)`` true classes (targeted: target classes).
            state: unused (PGD keeps no state).

        Returns:
            ``(next iterate, logits at adv)``.
        """
        grad, logits = self.loss_grad(adv, labels)
        adv = adv + self.step_size * grad.sign()
        delta = torch.clamp(adv - images, -self.eps, self.eps)
        return torch.clamp(images + delta, 0.0, 1.0), logits
