"""CW — Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, arXiv 1608.04644
(L2 attack).

Distance measure: L2. Change of variables ``x' = (tanh(w) + 1) / 2`` (so ``x'`` is always in
[0, 1]), ``w`` initialised at ``atanh((2x - 1) · 0.999999)`` (the authors' code), and Adam on ``w``
minimising, per image,

    ||x' - x||₂² + c · f(x'),
    f(x') = max(Z_y - max_{j≠y} Z_j, -κ)            (untargeted, y the true class)
    f(x') = max(max_{j≠t} Z_j - Z_t, -κ)            (targeted, t = ``labels``)

with ``Z`` the logits. At every step the current iterate counts as adversarial when
``max_{j≠y} Z_j - Z_y > κ`` (targeted: ``Z_t - max_{j≠t} Z_j > κ``), and per image the adversarial
with the smallest L2 distance is kept.

Budget (our contract, not the paper's): CW is a minimum-norm attack, but every medrobust attack must
return images inside the ε-ball. So an image whose best adversarial has ``||x' - x||₂ > eps``, or
for which none was found, is returned **clean**: robust accuracy under this attack is accuracy
"under CW at L2 ≤ ε". ``eps=inf`` (the default) returns every adversarial found.

Defaults as torchattacks' CW (``c=1``, ``kappa=0``, ``lr=0.01``) except ``steps=100`` (torchattacks:
50). Choices: a fixed ``c`` (the paper's binary search over ``c`` is not run); no early abort, so
every image gets all ``steps`` and the result for one image does not depend on the rest of the
batch; the iterate after the last Adam step is not evaluated (as in the reference code). Gradients
come from ``torch.autograd.grad`` w.r.t. ``w`` only: the model's parameter ``.grad`` is never
touched. CW is deterministic; ``seed`` is accepted for a uniform signature and unused.

Args (constructor):
    model: classifier taking [0, 1] NCHW images, returning logits.
    eps: L2 radius within which results are returned (``inf``: no limit).
    norm: ``"l2"``.
    c: weight of the classification term ``f``.
    kappa: confidence margin κ >= 0.
    steps: Adam iterations (>= 1).
    lr: Adam learning rate.
    targeted: if True, ``labels`` passed to the call are the target classes.
    seed: unused (the attack is deterministic).
"""

from __future__ import annotations

import logging

import torch

from medrobust.attacks.base import ATTACKS, Attack

log = logging.getLogger(__name__)

_ATANH_SCALE = 0.999999  # keeps atanh finite at pixels equal to 0 or 1 (Carlini & Wagner's code)


@ATTACKS.register()
class CW(Attack):
    """Carlini-Wagner L2 attack with a fixed ``c``, restricted to the ε-ball. See the module docstring.

    Args:
        model: classifier taking [0, 1] NCHW images, returning logits.
        eps: L2 radius within which results are returned; default ``inf`` (no limit).
        norm: ``"l2"``.
        c: weight of the classification term ``f`` (>= 0); default 1.
        kappa: confidence margin κ (>= 0); default 0.
        steps: Adam iterations (>= 1); default 100.
        lr: Adam learning rate (> 0); default 0.01.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: unused (the attack is deterministic).

    Raises:
        ValueError: ``steps < 1``, ``c < 0``, ``kappa < 0``, ``lr <= 0``, a norm other than ``"l2"``
            or ``eps < 0``.
    """

    name = "cw"
    norms = ("l2",)

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = float("inf"),
        norm: str = "l2",
        c: float = 1.0,
        kappa: float = 0.0,
        steps: int = 100,
        lr: float = 0.01,
        targeted: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, eps, norm, targeted, seed)
        if steps < 1:
            raise ValueError(f"cw: steps must be >= 1, got {steps}")
        if c < 0:
            raise ValueError(f"cw: c must be >= 0, got {c}")
        if kappa < 0:
            raise ValueError(f"cw: kappa must be >= 0, got {kappa}")
        if lr <= 0:
            raise ValueError(f"cw: lr must be > 0, got {lr}")
        self.c = float(c)
        self.kappa = float(kappa)
        self.steps = int(steps)
        self.lr = float(lr)

    def _margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``Z_y - max_{j≠y} Z_j`` (targeted: ``max_{j≠t} Z_j - Z_t``); success iff ``< -κ``."""
        idx = torch.arange(logits.shape[0], device=logits.device)
        z_label = logits[idx, labels]
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[idx, labels] = True
        z_other = logits.masked_fill(mask, -float("inf")).amax(dim=1)
        return z_other - z_label if self.targeted else z_label - z_other

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adam on ``w``; per image the closest adversarial found, or the clean image if none lies within ε."""
        labels = labels.to(images.device)
        n = images.shape[0]
        w = torch.atanh((2 * images - 1) * _ATANH_SCALE).detach().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        best_adv = images.clone()
        best_l2sq = torch.full((n,), float("inf"), device=images.device, dtype=images.dtype)

        with torch.enable_grad():
            for _ in range(self.steps):
                adv = (torch.tanh(w) + 1) / 2
                l2sq = (adv - images).flatten(1).pow(2).sum(dim=1)
                margin = self._margin(self.model(adv), labels)
                f = torch.clamp(margin, min=-self.kappa)
                cost = (l2sq + self.c * f).sum()
                (grad,) = torch.autograd.grad(cost, w)

                with torch.no_grad():
                    better = (margin < -self.kappa) & (l2sq < best_l2sq)
                    best_l2sq = torch.where(better, l2sq, best_l2sq)
                    best_adv[better] = adv[better]
                w.grad = grad
                opt.step()
                w.grad = None

        with torch.no_grad():
            best_adv = best_adv.clamp(0.0, 1.0)
            dist = (best_adv - images).flatten(1).norm(dim=1)
            outside = dist > self.eps
            best_adv[outside] = images[outside]
        found = torch.isfinite(best_l2sq)
        log.debug(
            "cw: adversarial found for %d / %d, %d within eps=%g",
            int(found.sum()),
            n,
            int((found & ~outside).sum()),
            self.eps,
        )
        return best_adv
