"""FGSM — Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015, arXiv 1412.6572.

L∞, one step: ``x' = clip_[0,1](x + ε · sign(∇ₓ CE(f(x), y)))`` (targeted: minus the gradient of the
CE towards the target). Identical to torchattacks 3.5.1's ``FGSM``. Default ``eps=8/255``.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import ATTACKS, Attack


@ATTACKS.register()
class FGSM(Attack):
    """FGSM (L∞): one signed-gradient step of size ε. See the module docstring.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the L∞ budget (fraction of the [0, 1] range); default 8/255.
        norm: ``"linf"``.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: unused (FGSM is deterministic); kept for a uniform signature.

    Raises:
        ValueError: a norm other than ``"linf"`` or ``eps < 0``.
    """

    name = "fgsm"
    norms = ("linf",)

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps, norm, targeted, seed)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``clip_[0,1](x + ε · sign(∇ₓ CE))`` (targeted: the gradient of minus the CE to the target)."""
        grad, _ = self.loss_grad(images, labels)
        return torch.clamp(images + self.eps * grad.sign(), 0.0, 1.0)
