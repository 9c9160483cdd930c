"""PGD (L2) — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
arXiv 1706.06083, in the L2 ball.

Step along the L2-normalised gradient, ``x + α·∇/(‖∇‖₂ + 1e-10)``, then scale ``δ`` back into the
ball (``δ · min(1, ε/‖δ‖₂)``) and clip to [0, 1] — the order and the 1e-10 of torchattacks 3.5.1's
``PGDL2``. The random start draws a Gaussian direction and a radius ``U(0, 1)·ε`` (torchattacks'
convention; not uniform in volume).

Defaults (torchattacks): ``eps=1.0``, ``steps=10``, ``step_size=0.2``, ``random_start=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import ATTACKS, IterativeAttack

EPS_FOR_DIVISION = 1e-10


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms, shaped for broadcasting against ``t``.

    Args:
        t: a batch ``(N, ...)``; each sample is flattened.

    Returns:
        ``(N, 1, ..., 1)`` norms, with as many dimensions as ``t``.

    Example:
        >>> l2_norms(torch.ones(2, 1, 2, 2)).flatten()
        tensor([2., 2.])
    """
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


@ATTACKS.register()
class PGDL2(IterativeAttack):
    """PGD in the L2 ball. See the module docstring.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the L2 radius (pixel values in [0, 1]); default 1.0.
        norm: ``"l2"``.
        steps: iterations (>= 1); default 10.
        step_size: the step α (an L2 length); default 0.2 (``None``: ``2.5 · eps / steps``).
        random_start: start at a Gaussian direction with radius ``U(0, 1)·ε``; default True.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: seed for the random start; ``None`` uses the global RNG.

    Raises:
        ValueError: ``steps < 1``, a norm other than ``"l2"`` or ``eps < 0``.
    """

    name = "pgdl2"
    norms = ("l2",)

    def __init__(self, model: nn.Module, eps: float = 1.0, norm: str = "l2", steps: int = 10,
                 step_size: float | None = 0.2, random_start: bool = True, targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps, norm, steps, step_size, random_start, targeted, seed)

    def init_adv(self, images: torch.Tensor) -> torch.Tensor:
        """``clip_[0,1](x + δ)``, ``δ`` Gaussian in direction, ``‖δ‖₂ ~ U(0, 1)·ε`` (else a copy of ``images``)."""
        if not self.random_start:
            return images.clone()
        g = self.generator(images.device)
        delta = torch.randn(images.shape, generator=g, device=images.device, dtype=images.dtype)
        radius = torch.rand((len(images),) + (1,) * (images.dim() - 1), generator=g, device=images.device,
                            dtype=images.dtype)
        delta = delta * radius / l2_norms(delta) * self.eps
        return torch.clamp(images + delta, 0.0, 1.0)

    def step(self, adv, images, labels, state):
        """``x + α·∇/(‖∇‖₂ + 1e-10)``, then ``δ · min(1, ε/‖δ‖₂)`` and clip to [0, 1].

        Args:
            adv: ``(n, C, H, W)`` current iterates.
            images: ``(n, C, H, W)`` clean images (the centre of the ball).
            labels: ``(n,)`` true classes (targeted: target classes).
            state: unused (PGD keeps no state).

        Returns:
            ``(next iterate, logits at adv)``.
        """
        grad, logits = self.loss_grad(adv, labels)
        grad = grad / (l2_norms(grad) + EPS_FOR_DIVISION)
        adv = adv + self.step_size * grad
        delta = adv - images
        factor = torch.clamp(self.eps / l2_norms(delta), max=1.0)
        return torch.clamp(images + delta * factor, 0.0, 1.0), logits
