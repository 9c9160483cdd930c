"""BIM / I-FGSM — Kurakin et al., "Adversarial Examples in the Physical World", ICLR-W 2017, arXiv 1607.02533.

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
    """Kurakin's number of iterations ``int(min(ε·255 + 4, 1.25·ε·255))``.

    Args:
        eps: the L∞ budget as a fraction of the [0, 1] range.

    Returns:
        The number of steps (0 for very small ``eps``; :class:`BIM` then runs 1).

    Example:
        >>> kurakin_steps(8 / 255)
        10
    """
    return int(min(eps * 255 + 4, 1.25 * eps * 255))


@ATTACKS.register()
class BIM(IterativeAttack):
    """BIM / I-FGSM (L∞), no random start. See the module docstring.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the L∞ budget (fraction of the [0, 1] range); default 8/255.
        norm: ``"linf"``.
        steps: iterations; 0 selects :func:`kurakin_steps`; a result below 1 runs 1; default 10.
        step_size: the step α; default 2/255 (``None``: ``2.5 · eps / steps``).
        random_start: must be False (BIM starts from the clean images).
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: unused (BIM is deterministic); kept for a uniform signature.

    Raises:
        ValueError: ``random_start=True``, an unsupported ``norm`` or ``eps < 0``.
    """

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
        """``adv + α·sign(∇)``, clipped to ``[max(x₀-ε, 0), min(x₀+ε, 1)]``.

        Args:
            adv: ``(n, C, H, W)`` current iterates.
            images: ``(n, C, H, W)`` clean images (the centre of the ball).
            labels: ``(n,)`` true classes (targeted: target classes).
            state: unused (BIM keeps no state).

        Returns:
            ``(next iterate, logits at adv)``.
        """
        grad, logits = self.loss_grad(adv, labels)
        adv = adv + self.step_size * grad.sign()
        lower = torch.clamp(images - self.eps, min=0.0)
        upper = images + self.eps
        adv = torch.where(adv < lower, lower, adv)
        adv = torch.where(adv > upper, upper, adv)
        return torch.clamp(adv, max=1.0), logits
