"""BIM / I-FGSM — Kurakin et al., "Adversarial Examples in the Physical World", ICLR-W 2017.

Iterated FGSM without a random start: ``x + α·sign(∇)``, then clipped to ``[max(x₀-ε, 0),
min(x₀+ε, 1)]`` — torchattacks 3.5.1's ``BIM`` (its three-way clip gives the same values as this).

Defaults (torchattacks): ``eps=8/255``, ``step_size=2/255``, ``steps=10``; ``steps=0`` selects
Kurakin's rule ``min(ε·255 + 4, 1.25·ε·255)``.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import ATTACKS, IterativeAttack


def kurakin_steps(eps: float) -> int:
    return int(min(eps * 255 + 4, 1.25 * eps * 255))


@ATTACKS.register()
class BIM(IterativeAttack):
    name = "bim"
    norms = ("linf",)

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: float | None = 2 / 255, random_start: bool = False, targeted: bool = False,
                 seed: int | None = None) -> None:
        if random_start:
            raise ValueError("bim has no random start (use pgd)")
        steps = kurakin_steps(eps) if steps == 0 else steps
        super().__init__(model, eps, norm, max(steps, 1), step_size, False, targeted, seed)

    def step(self, adv, images, labels, state):
        grad, logits = self.loss_grad(adv, labels)
        adv = adv + self.step_size * grad.sign()
        lower = torch.clamp(images - self.eps, min=0.0)
        upper = images + self.eps
        adv = torch.where(adv < lower, lower, adv)
        adv = torch.where(adv > upper, upper, adv)
        return torch.clamp(adv, max=1.0), logits
