"""FGSM — Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.

L∞, one step: ``x' = clip_[0,1](x + ε · sign(∇ₓ CE(f(x), y)))``. Convention of torchattacks 3.5.
"""

from __future__ import annotations

import torch

from medrobust.attacks.base import Attack


class FGSM(Attack):
    name = "fgsm"
    norms = ("linf",)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grad = self.loss_grad(images, labels)
        return torch.clamp(images + self.eps * grad.sign(), 0.0, 1.0)
