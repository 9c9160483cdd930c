"""MI-FGSM — Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018, arXiv 1710.06081.

Momentum on the L1-normalised gradient: ``g ← ∇/mean(|∇|) + μ·g`` (per image, the mean over
C×H×W, as torchattacks 3.5.1 normalises), then ``x + α·sign(g)``, project to the ε-box, clip to
[0, 1]. No random start.

Defaults (torchattacks): ``eps=8/255``, ``step_size=2/255``, ``steps=10``, ``decay=1.0``.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import ATTACKS, IterativeAttack


@ATTACKS.register()
class MIFGSM(IterativeAttack):
    """MI-FGSM (L∞), no random start. See the module docstring.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the L∞ budget (fraction of the [0, 1] range); default 8/255.
        norm: ``"linf"``.
        steps: iterations (>= 1); default 10.
        step_size: the step α; default 2/255 (``None``: ``2.5 · eps / steps``).
        decay: the momentum factor μ; default 1.0.
        random_start: must be False (MI-FGSM starts from the clean images).
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: unused (MI-FGSM is deterministic); kept for a uniform signature.

    Raises:
        ValueError: ``random_start=True``, ``steps < 1``, an unsupported ``norm`` or ``eps < 0``.
    """

    name = "mifgsm"
    norms = ("linf",)

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                 step_size: float | None = 2 / 255, decay: float = 1.0, random_start: bool = False,
                 targeted: bool = False, seed: int | None = None) -> None:
        if random_start:
            raise ValueError("mifgsm has no random start")
        super().__init__(model, eps, norm, steps, step_size, False, targeted, seed)
        self.decay = float(decay)

    def init_state(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"momentum": zeros shaped like images}``: the accumulated gradient ``g``."""
        return {"momentum": torch.zeros_like(images)}

    def step(self, adv, images, labels, state):
        """``g ← ∇/mean(|∇|) + μ·g`` (stored in ``state``), then ``x + α·sign(g)``, projected and clipped.

        Args:
            adv: ``(n, C, H, W)`` current iterates.
            images: ``(n, C, H, W)`` clean images (the centre of the ball).
            labels: ``(n,)`` true classes (targeted: target classes).
            state: ``{"momentum": g}``, ``(n, C, H, W)``; ``g`` is replaced by the new one.

        Returns:
            ``(next iterate, logits at adv)``.
        """
        grad, logits = self.loss_grad(adv, labels)
        grad = grad / torch.mean(torch.abs(grad), dim=tuple(range(1, grad.dim())), keepdim=True)
        grad = grad + state["momentum"] * self.decay
        state["momentum"] = grad
        adv = adv + self.step_size * grad.sign()
        delta = torch.clamp(adv - images, -self.eps, self.eps)
        return torch.clamp(images + delta, 0.0, 1.0), logits
