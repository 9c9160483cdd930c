"""Gaussian data augmentation for randomized smoothing — Cohen, Rosenfeld & Kolter, ICML 2019,
arXiv 1902.02918, Sec. 3.1 / 4: train the base classifier with noise ``ε ~ N(0, σ²I)`` added to
each input, at the σ it will be certified with, so that the smoothed classifier
``g(x) = argmax_c P(f(x + ε) = c)`` is accurate:

    loss = CE(f(x + σ·ε), y),   ε ~ N(0, I)

The noise is added in [0, 1] pixel space and not clipped, as in certification
(:mod:`medrobust.certify`). Defaults: ``sigma = 0.25``. ``seed`` seeds a local generator that
advances from batch to batch; None uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


@TRAINING_METHODS.register()
class GaussianNoise(TrainingMethod):
    """Cross-entropy on Gaussian-noised inputs (Cohen et al. 2019), the base model of a smoothed classifier.

    Args:
        sigma: the noise's standard deviation in [0, 1] pixel units (> 0; certify at the same σ).
        seed: seeds the noise (advancing from batch to batch); None uses the global RNG.

    Raises:
        ValueError: ``sigma <= 0``.

    Stats: ``train_noisy_acc``.
    """

    name = "gaussian_noise"

    def __init__(self, sigma: float = 0.25, seed: int | None = None) -> None:
        super().__init__(sigma=sigma, seed=seed)
        if not sigma > 0:
            raise ValueError(f"gaussian_noise: sigma must be > 0, got {sigma}")
        self.sigma, self.seed = float(sigma), seed

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x + σ·ε), y)`` with fresh noise ``ε ~ N(0, I)`` for every image."""
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        logits = model(x + self.sigma * noise)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_noisy_acc": (logits.argmax(1) == y).float().mean().item()}
