"""PGD — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

Projected gradient ascent on the cross-entropy, L∞ or L2, with an optional uniform random start.
Order of operations (torchattacks 3.5 convention): step, project onto the ε-ball, clip to [0, 1].

Defaults: ``steps=10``, ``step_size=2.5·ε/steps`` (Madry et al.), ``random_start=True``.
"""

from __future__ import annotations

import torch

from medrobust.attacks.base import Attack

_TINY = 1e-10


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


class PGD(Attack):
    name = "pgd"
    norms = ("linf", "l2")

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        targeted: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, eps, norm, targeted, seed)
        if steps < 1:
            raise ValueError(f"pgd: steps must be >= 1, got {steps}")
        self.steps = steps
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps
        self.random_start = random_start

    def _random_start(self, images: torch.Tensor) -> torch.Tensor:
        g = self.generator(images.device)
        if self.norm == "linf":
            noise = torch.rand(images.shape, generator=g, device=images.device, dtype=images.dtype)
            return torch.clamp(images + (2 * noise - 1) * self.eps, 0.0, 1.0)
        # L2: uniform in the ball (direction ~ normal, radius ~ U^(1/d) · ε)
        d = images[0].numel()
        direction = torch.randn(images.shape, generator=g, device=images.device, dtype=images.dtype)
        direction = direction / (_l2_norm(direction) + _TINY)
        radius = torch.rand((images.shape[0],), generator=g, device=images.device, dtype=images.dtype)
        radius = radius.pow(1.0 / d).view(-1, *([1] * (images.dim() - 1))) * self.eps
        return torch.clamp(images + direction * radius, 0.0, 1.0)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = self._random_start(images) if self.random_start else images.clone()
        for _ in range(self.steps):
            grad = self.loss_grad(adv, labels)
            if self.norm == "linf":
                adv = adv + self.step_size * grad.sign()
                delta = torch.clamp(adv - images, -self.eps, self.eps)
            else:
                adv = adv + self.step_size * grad / (_l2_norm(grad) + _TINY)
                delta = adv - images
                factor = torch.clamp(self.eps / (_l2_norm(delta) + _TINY), max=1.0)
                delta = delta * factor
            adv = torch.clamp(images + delta, 0.0, 1.0).detach()
        return adv
