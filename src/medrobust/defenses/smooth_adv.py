"""SmoothAdv — Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
Classifiers", NeurIPS 2019, arXiv 1906.04584, Sec. 3 and Algorithm 1 (the "multi-noise" variant):
adversarial training of the *smoothed* classifier, so that its randomized-smoothing certificate
(:mod:`medrobust.certify`) grows.

For each batch, ``m`` noise draws ``δ_1 … δ_m ~ N(0, σ²I)`` per image; PGD in L2 finds

    x' = argmax_{‖x' − x‖₂ ≤ ε}  −log( (1/m) Σ_i softmax(f(x' + δ_i))_y )      (Eq. (S))

with the same draws at every step (:func:`medrobust.attacks.smoothed.smoothed_pgd_l2`), and the
model trains on the noisy adversarial copies:

    loss = (1/m) Σ_i CE(f(x' + δ_i), y)

Noise is added in [0, 1] pixel space and not clipped (as in certification); ``x'`` lies in [0, 1].
Defaults: σ = 0.25, ε = 0.25 (L2, pixel units), 2 steps of ``2.5·ε/steps``, m = 2, and an ε ramp
over ``warmup_epochs`` (the paper warms ε up over its first 10 epochs; 0 disables it). The paper's
grid: ε ∈ {0.25, 0.5, 1, 2}, steps ∈ {1, 2, 4, 8, 10}, m ∈ {1, 2, 4, 8}. ``seed`` seeds a local
generator that advances from batch to batch; None uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.smoothed import smoothed_pgd_l2
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


@TRAINING_METHODS.register()
class SmoothAdv(TrainingMethod):
    """Adversarial training of the smoothed classifier (Salman et al. 2019), the base model of a certificate.

    Args:
        sigma: the noise's standard deviation in [0, 1] pixel units (> 0; certify at the same σ).
        eps: the L2 radius of the attack on the smoothed classifier, in pixel units (≥ 0; 0 trains on
            noise only, as ``gaussian_noise`` with ``samples`` draws).
        steps: PGD steps (≥ 1).
        samples: noise draws ``m`` per image, shared by the attack and the loss (≥ 1).
        warmup_epochs: epochs over which ε ramps up linearly (:meth:`current_eps`); 0 disables it.
        seed: seeds the noise (advancing from batch to batch); None uses the global RNG.

    Raises:
        ValueError: ``sigma <= 0``, ``eps < 0``, ``steps < 1`` or ``samples < 1``.

    Stats: ``train_noisy_adv_acc``, ``train_eps``.
    """

    name = "smooth_adv"

    def __init__(self, sigma: float = 0.25, eps: float = 0.25, steps: int = 2, samples: int = 2,
                 warmup_epochs: int = 0, seed: int | None = None) -> None:
        super().__init__(sigma=sigma, eps=eps, steps=steps, samples=samples, warmup_epochs=warmup_epochs, seed=seed)
        if not sigma > 0:
            raise ValueError(f"smooth_adv: sigma must be > 0, got {sigma}")
        if not eps >= 0:
            raise ValueError(f"smooth_adv: eps must be >= 0 (an L2 radius in pixel units), got {eps}")
        if steps < 1 or samples < 1:
            raise ValueError(f"smooth_adv: steps and samples must be >= 1, got steps={steps}, samples={samples}")
        self.sigma, self.eps, self.steps, self.samples = float(sigma), float(eps), int(steps), int(samples)
        self.warmup_epochs, self.seed = int(warmup_epochs), seed

    def current_eps(self) -> float:
        """ε for the current epoch: ``ε · (epoch + 1) / (warmup_epochs + 1)`` during the warm-up, else ε."""
        if self.warmup_epochs <= 0 or self.epoch >= self.warmup_epochs:
            return self.eps
        return self.eps * (self.epoch + 1) / (self.warmup_epochs + 1)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``(1/m) Σ_i CE(f(x' + δ_i), y)``, ``x'`` the PGD maximiser of Eq. (S) under the same ``δ_i``."""
        noise = self.sigma * torch.randn((self.samples, *x.shape), generator=self.generator(x.device),
                                         device=x.device, dtype=x.dtype)
        eps = self.current_eps()
        x_adv = x if eps == 0 else smoothed_pgd_l2(model, x, y, self.sigma, eps, self.steps, noise=noise,
                                                   batch_size=self.samples * len(x), fast=False)
        logits = model((x_adv.unsqueeze(0) + noise).flatten(0, 1))
        targets = y.repeat(self.samples)
        loss = F.cross_entropy(logits, targets)
        return loss, {"train_noisy_adv_acc": (logits.argmax(1) == targets).float().mean().item(), "train_eps": eps}
