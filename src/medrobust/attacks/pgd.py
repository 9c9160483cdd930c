"""PGD (L∞) — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

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
    name = "pgd"
    norms = ("linf",)

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, random_start: bool = True, targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps, norm, steps, step_size, random_start, targeted, seed)

    def init_adv(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images.clone()
        noise = torch.rand(images.shape, generator=self.generator(images.device), device=images.device,
                           dtype=images.dtype)
        return torch.clamp(images + (2 * noise - 1) * self.eps, 0.0, 1.0)

    def step(self, adv, images, labels, state):
        grad, logits = self.loss_grad(adv, labels)
        adv = adv + self.step_size * grad.sign()
        delta = torch.clamp(adv - images, -self.eps, self.eps)
        return torch.clamp(images + delta, 0.0, 1.0), logits
