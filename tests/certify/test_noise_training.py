"""``gaussian_noise`` (Cohen et al. 2019): the base model of a smoothed classifier trains on x + N(0, σ²)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.defenses import TRAINING_METHODS


def test_the_loss_sees_unclipped_gaussian_noise_at_sigma_reproducibly():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(64, 2)

        def forward(self, z):
            seen.append(z.detach().clone())
            return self.head(z.flatten(1))

    x, y = torch.full((256, 1, 8, 8), 0.9), torch.randint(0, 2, (256,))
    method = TRAINING_METHODS["gaussian_noise"](sigma=0.3, seed=5)
    loss, stats = method.loss(Probe(), x, y)
    loss.backward()
    noise = seen[0] - x
    assert noise.std().item() == pytest.approx(0.3, rel=0.02) and (seen[0] > 1).any()  # not clipped
    assert 0 <= stats["train_noisy_acc"] <= 1
    again = TRAINING_METHODS["gaussian_noise"](sigma=0.3, seed=5)
    again.loss(Probe(), x, y)
    assert torch.equal(seen[1], seen[0])  # the same seed, the same noise
    method.loss(Probe(), x, y)
    assert not torch.equal(seen[2], seen[0])  # the generator advances from batch to batch
    with pytest.raises(ValueError, match="sigma"):
        TRAINING_METHODS["gaussian_noise"](sigma=0.0)
