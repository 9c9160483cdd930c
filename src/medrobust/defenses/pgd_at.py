"""PGD adversarial training — Madry et al., ICLR 2018, Eq. (2.1):

    min_θ  E_(x,y) [ max_{‖δ‖ ≤ ε} CE(f_θ(x + δ), y) ]

The inner maximisation is PGD (L∞ or L2) with a random start, run in eval mode (BN statistics are
not updated by the attack); the outer step trains on the adversarial batch only.

Defaults (params.yaml ``train.methods.pgd_at``): L∞, ε = 8/255, 7 steps of 2/255, random start.
``warmup_epochs`` ramps ε linearly from ε/(warmup + 1) to ε over the first epochs (a common stabiliser on
small data; 0 disables it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import PGD, PGDL2
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


@TRAINING_METHODS.register()
class PGDAT(TrainingMethod):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on the PGD adversarial batch only.

    The attack is :class:`medrobust.attacks.PGD` (``norm="linf"``) or :class:`medrobust.attacks.PGDL2`
    (any other ``norm``), built per batch, with random starts from the global RNG (no ``seed``).

    Args:
        norm: ``"linf"`` or ``"l2"`` (the value is not checked: anything but ``"linf"`` runs L2-PGD).
        eps: ε, the budget: a fraction of the [0, 1] pixel range (L∞) or an L2 radius in the same units.
        steps: PGD iterations.
        step_size: PGD step at the full ε, in the units of ``eps``; during the warm-up it is scaled
            by ``current_eps() / eps``.
        random_start: start PGD at a random point of the ε-ball (else at ``x``).
        warmup_epochs: epochs over which ε ramps up (:meth:`current_eps`); 0 disables the ramp.

    Stats: ``train_adv_acc``, ``train_eps``.
    """

    name = "pgd_at"

    def __init__(
        self,
        norm: str = "linf",
        eps: Eps = 8 / 255,
        steps: int = 7,
        step_size: Eps = 2 / 255,
        random_start: bool = True,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, random_start=random_start)
        self.norm, self.eps, self.steps = norm, eps, steps
        self.step_size, self.random_start, self.warmup_epochs = step_size, random_start, warmup_epochs

    def current_eps(self) -> float:
        """ε for the current epoch: ``ε · (epoch + 1) / (warmup_epochs + 1)`` during the warm-up, else ε.

        Returns:
            The budget in the units of ``eps``; ``eps`` itself once ``epoch >= warmup_epochs``
            (the epoch is the one set by :meth:`start_epoch`).
        """
        if self.warmup_epochs <= 0 or self.epoch >= self.warmup_epochs:
            return self.eps
        return self.eps * (self.epoch + 1) / (self.warmup_epochs + 1)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Madry et al. Eq. (2.1): ``CE(f(x + δ), y)`` with δ the PGD maximiser at :meth:`current_eps`."""
        eps = self.current_eps()
        scale = eps / self.eps if self.eps > 0 else 1.0
        cls = PGD if self.norm == "linf" else PGDL2
        attack = cls(model, eps=eps, steps=self.steps, step_size=self.step_size * scale,
                     random_start=self.random_start)
        x_adv = attack(x, y)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_adv_acc": (logits.argmax(1) == y).float().mean().item(), "train_eps": eps}
