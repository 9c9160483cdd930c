"""Our CERTIFY against IBM ART's (``PyTorchRandomizedSmoothing.certify``, 1.20.1), a test-only oracle like
torchattacks: the same small CNN, σ, n0, n and α on the same digits. The two draw independent noise,
so they agree up to Monte-Carlo error, stated per point below."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from medrobust.bench.autoattack import digits
from medrobust.certify import certify_all
from medrobust.models import ModelSpec, build_model
from medrobust.utils import seed_everything

pytest.importorskip("art", reason="ART is the oracle (make setup-test installs it)")

SIGMA, N0, N, ALPHA, N_IMAGES = 0.25, 100, 2000, 0.001, 60


@pytest.fixture(scope="module")
def noisy_cnn():
    """The digits CNN trained with Gaussian noise at σ (Cohen's base classifier), and test images."""
    x_train, y_train, x, y = digits(N_IMAGES, seed=0)
    seed_everything(0)
    model = build_model(ModelSpec("small_cnn", 10, in_channels=1, width=16, image_size=8, mean=0.3, std=0.4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            noisy = x_train[b] + SIGMA * torch.randn(x_train[b].shape, generator=g)
            loss = F.cross_entropy(model(noisy), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, y


def test_certified_accuracy_agrees_with_art_within_monte_carlo_error(noisy_cnn):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    model, x, y = noisy_cnn
    ours = certify_all(model, x, SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=1000, seed=0)
    np.random.seed(0)
    art = PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                     nb_classes=10, clip_values=None, sample_size=N0, scale=SIGMA, alpha=ALPHA,
                                     device_type="cpu")
    art_pred, art_radius = art.certify(x.numpy(), n=N, batch_size=1000)
    art_pred, art_radius = torch.as_tensor(art_pred).long(), torch.as_tensor(art_radius, dtype=torch.float64)
    both = (ours.prediction >= 0) & (art_pred >= 0)
    assert both.sum() >= 0.5 * N_IMAGES  # a noise-trained model certifies most points
    assert torch.equal(ours.prediction[both], art_pred[both])
    # p̲_A per point: the same bound of two independent estimates of one p_A. Their difference has the
    # standard error sqrt(2 p (1 - p) / n); every point agrees within 5 of them (+ 1e-3 for ties at p ≈ 1)
    p_ours = torch.as_tensor(ours.p_lower)[both]
    p_art = torch.as_tensor(norm.cdf(art_radius[both].numpy() / SIGMA))
    se = torch.sqrt(2 * p_ours * (1 - p_ours) / N)
    assert ((p_ours - p_art).abs() <= 5 * se + 1e-3).all()
    # certified accuracy at each radius: the counts differ by at most the points whose p̲_A lies within
    # 5 standard errors of that radius's threshold Φ(r/σ) (the only ones Monte-Carlo noise can move)
    p_all = torch.as_tensor(ours.p_lower)
    se_all = torch.sqrt(2 * p_all * (1 - p_all) / N) + 1e-3
    for r in (0.0, 0.25, 0.5, 0.75):
        acc_ours = int(((ours.prediction == y) & (ours.radius >= r)).sum())
        acc_art = int(((art_pred == y) & (art_radius >= r)).sum())
        near = int(((p_all - norm.cdf(r / SIGMA)).abs() <= 5 * se_all).sum())
        assert abs(acc_ours - acc_art) <= near, (r, acc_ours, acc_art, near)
    assert int(((ours.prediction == y) & (ours.radius >= 0.25)).sum()) >= 0.3 * N_IMAGES
