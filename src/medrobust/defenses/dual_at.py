"""Dual adversarial training — the ARFL paper's Eq. (4) (Joel et al., 2022's dual adversarial
training with a clean/adversarial mixing ratio; ARFL = "Adversarially Robust Feature Learning",
arXiv 2402.08768):

    min_θ  E_(x,y) [ (1 − r) · max_{δ ∈ Δ} L_cls(θ, x + δ, y)  +  r · L_cls(θ, x, y) ]        (4)

"where r denotes the ratio of the amount of standard data relative to the total amount of the
data (standard data plus adversarial data) in each training batch." So **r weights the clean
(standard) term**: r = 1 is standard training, r = 0 is PGD adversarial training (Madry et al.),
r = 0.5 is dual adversarial training (the paper's Section 4: "We assigned parameter r to 1, 0, and
0.5, respectively, to implement ... standard training, adversarial training, dual adversarial
training"). :func:`dual_loss` implements ``r·CE(f(x), y) + (1 − r)·CE(f(x'), y)``, CE averaged
over the batch. (ARFL's own regulariser, Eqs. 1, 2 and 5, is not part of this baseline.)

The inner maximisation is PGD with a random start (:class:`medrobust.attacks.PGD` for ``norm=
"linf"``, :class:`medrobust.attacks.PGDL2` for ``"l2"``), run in eval mode with input gradients
only. For 0 < r < 1 the clean and adversarial batches go through the model as *one* concatenated
batch (the paper's mixed batch: batch norm sees both); r = 1 skips the attack and r = 0 skips the
clean forward, so the two ends are exactly standard training and PGD-AT.

Defaults: r = 0.5, L∞, ε = 8/255, 7 steps of 2/255 (the paper uses 7 PGD steps; its mammography
ε₁ = 0.01). For ``norm="l2"`` pass an L2 radius as ``eps`` and a matching ``step_size``.
``seed`` (optional) makes the random starts reproducible (one attack seed per batch drawn from a
local generator); ``None`` uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import PGD, PGDL2
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


def dual_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """ARFL Eq. (4): ``r · CE(f(x), y) + (1 − r) · CE(f(x'), y)`` (r = share of clean data).

    Args:
        logits_clean: logits ``[N, K]`` of the clean images.
        logits_adv: logits ``[N, K]`` of the adversarial images.
        y: class indices ``[N]``.
        r: the share of clean data in [0, 1] (1: standard training, 0: adversarial training only).

    Returns:
        A scalar; each cross-entropy is averaged over the batch.
    """
    return r * F.cross_entropy(logits_clean, y) + (1.0 - r) * F.cross_entropy(logits_adv, y)


@TRAINING_METHODS.register()
class DualAT(TrainingMethod):
    """Dual adversarial training (ARFL paper's Eq. 4, arXiv 2402.08768): r-weighted clean and PGD CE.

    Args:
        r: the share of clean data in [0, 1]; 1 skips the attack (standard training), 0 skips the
            clean forward pass (PGD-AT).
        norm: ``"linf"`` (:class:`medrobust.attacks.PGD`) or ``"l2"`` (:class:`medrobust.attacks.PGDL2`).
        eps: ε, a fraction of the [0, 1] pixel range (L∞) or an L2 radius in the same units.
        steps: PGD iterations.
        step_size: PGD step, in the units of ``eps``.
        random_start: start PGD at a random point of the ε-ball (else at ``x``).
        seed: makes the random starts reproducible (one attack seed per batch from a local
            generator); None uses the global RNG.

    Raises:
        ValueError: ``r`` outside [0, 1] or an unknown ``norm``.

    Stats: ``train_acc`` (clean; not for r = 0), ``train_adv_acc`` (not for r = 1).
    """

    name = "dual_at"

    def __init__(
        self,
        r: float = 0.5,
        norm: str = "linf",
        eps: Eps = 8 / 255,
        steps: int = 7,
        step_size: Eps = 2 / 255,
        random_start: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(r=r, norm=norm, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         seed=seed)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"dual_at: r must be in [0, 1], got {r}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"dual_at: norm must be 'linf' or 'l2', got {norm!r}")
        self.r, self.norm, self.eps, self.steps = float(r), norm, float(eps), int(steps)
        self.step_size, self.random_start, self.seed = float(step_size), random_start, seed

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """ARFL Eq. (4) (:func:`dual_loss`); for 0 < r < 1 one concatenated clean + adversarial batch."""
        stats: dict[str, float] = {}
        if self.r >= 1.0:  # standard training: no adversarial data
            logits = model(x)
            stats["train_acc"] = (logits.argmax(1) == y).float().mean().item()
            return F.cross_entropy(logits, y), stats
        cls = PGD if self.norm == "linf" else PGDL2
        attack = cls(model, eps=self.eps, steps=self.steps, step_size=self.step_size,
                     random_start=self.random_start, seed=self.attack_seed())
        x_adv = attack(x, y)
        if self.r <= 0.0:  # adversarial training only
            logits_adv = model(x_adv)
            loss = F.cross_entropy(logits_adv, y)
        else:
            logits_clean, logits_adv = model(torch.cat([x, x_adv])).split(len(x))
            loss = dual_loss(logits_clean, logits_adv, y, self.r)
            stats["train_acc"] = (logits_clean.argmax(1) == y).float().mean().item()
        stats["train_adv_acc"] = (logits_adv.argmax(1) == y).float().mean().item()
        return loss, stats
