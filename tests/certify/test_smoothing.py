"""Randomized smoothing (Cohen et al. 2019) against what is known exactly: a linear classifier, whose
smoothed classifier is itself and whose certified radius is its distance to the boundary."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medrobust.certify import (ABSTAIN, certify, certify_all, lower_confidence_bound, predict, sample_counts,
                               smoothed_pgd_l2, soundness_check)

SIGMA, D = 0.25, 16


def linear_binary(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logits (s/2, -s/2) with s = w·x + b: class 0 iff s > 0, the distance to the boundary |s| / ‖w‖."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g)
    b = -0.5 * w.sum() + 0.1 * torch.randn((), generator=g)  # the boundary passes near the middle of [0, 1]^D
    model = nn.Linear(D, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([w / 2, -w / 2]))
        model.bias.copy_(torch.stack([b / 2, -b / 2]))
    return model, w, b


def points_at(model_w: torch.Tensor, b: torch.Tensor, margins: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Points near the middle of [0, 1]^D whose signed distance to the boundary w·x + b = 0 is ``margins``."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.05 * torch.randn(len(margins), D, generator=g)
    unit = model_w / model_w.norm()
    dist = (x @ model_w + b) / model_w.norm()
    return x + (margins - dist)[:, None] * unit


def test_the_certified_radius_never_exceeds_the_exact_one_and_reaches_90_percent_of_it():
    model, w, b = linear_binary()
    margins = torch.linspace(0.5 * SIGMA, 2 * SIGMA, 24)
    signs = torch.tensor([1.0, -1.0]).repeat(12)
    x = points_at(w, b, margins * signs)
    exact = ((x @ w + b).abs() / w.norm()).double()
    assert torch.allclose(exact, margins.double(), atol=1e-5)
    cert = certify_all(model, x, SIGMA, n0=100, n=10_000, alpha=0.001, seed=0)
    assert torch.equal(cert.prediction, (signs < 0).long())  # class 0 on the positive side
    assert (cert.radius <= exact + 1e-9).all()  # a lower bound (it may fail with probability α per point)
    ratio = (cert.radius / exact).mean().item()
    assert ratio >= 0.9, ratio
    # the bound itself: Beta(α; k, n - k + 1), i.e. Clopper–Pearson at 1 - 2α two-sided, as the paper
    from statsmodels.stats.proportion import proportion_confint
    assert lower_confidence_bound(9000, 10_000, 0.001) == pytest.approx(
        proportion_confint(9000, 10_000, alpha=0.002, method="beta")[0], rel=1e-9)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0


def test_certify_abstains_on_the_boundary_and_predict_abstains_where_the_test_cannot_decide():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.tensor([0.0, 0.0, 3 * SIGMA, -3 * SIGMA]))
    pred, radius = certify(model, x, SIGMA, n0=100, n=2000, seed=3)
    assert pred[:2].tolist() == [ABSTAIN, ABSTAIN] and radius[:2].tolist() == [0.0, 0.0]
    assert pred[2:].tolist() == [0, 1] and (radius[2:] > 0).all()
    assert predict(model, x, SIGMA, n=2000, seed=4).tolist() == [ABSTAIN, ABSTAIN, 0, 1]


def test_noise_is_gaussian_at_sigma_unclipped_and_counts_sum_to_n():
    seen = []

    class Probe(nn.Module):
        def forward(self, z):
            seen.append(z.clone())
            return torch.stack([z.flatten(1).sum(1), -z.flatten(1).sum(1)], 1)

    x = torch.full((3, 1, 4, 4), 0.5)
    counts = sample_counts(Probe(), x, 0.5, n=700, batch_size=256, generator=torch.Generator().manual_seed(0))
    assert counts.sum(1).tolist() == [700, 700, 700]
    noise = torch.cat(seen) - 0.5
    assert noise.std().item() == pytest.approx(0.5, rel=0.03) and abs(noise.mean().item()) < 0.01
    assert (torch.cat(seen) < 0).any() and (torch.cat(seen) > 1).any()  # not clipped to [0, 1]
    assert [len(s) for s in seen] == [256, 256, 256, 256, 256, 256, 256, 256, 52]  # batched across inputs


def test_same_seed_same_certificate_and_refusals():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.tensor([0.3, -0.2, 0.1]))
    a, b_ = certify(model, x, SIGMA, n=500, seed=7), certify(model, x, SIGMA, n=500, seed=7)
    assert torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1])
    with pytest.raises(ValueError, match="alpha"):
        certify(model, x, SIGMA, alpha=0.0)
    with pytest.raises(ValueError, match="sigma"):
        certify(model, x, 0.0)


def test_the_smoothed_attack_stays_in_its_ball_and_pushes_towards_the_boundary():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.tensor([0.4, 0.6, -0.5]))
    assert 0 < x.min() and x.max() < 1
    y = torch.tensor([0, 0, 1])
    eps = torch.tensor([0.1, 0.2, 0.3])
    adv = smoothed_pgd_l2(model, x, y, SIGMA, eps, steps=20, samples=32, seed=0)
    moved = (adv - x).norm(dim=1)
    assert (moved <= eps + 1e-5).all() and (moved > 0.95 * eps).all()
    before, after = (x @ w + b) / w.norm(), (adv @ w + b) / w.norm()
    # on a linear model the best L2 step is straight at the boundary: the distance drops by ε
    assert torch.allclose(before.abs() - after.abs(), eps, atol=0.02)


class Widest(nn.Module):
    """The wrapped model, remembering the largest batch it was given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.widest = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.widest = max(self.widest, len(x))
        return self.inner(x)


def test_the_smoothed_attack_works_in_chunks_of_batch_size_noisy_copies():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.linspace(0.3, 0.6, 10))
    y, eps = torch.zeros(10, dtype=torch.long), torch.full((10,), 0.2)
    widest = Widest(model)
    adv = smoothed_pgd_l2(widest, x, y, SIGMA, eps, steps=20, samples=32, seed=0, batch_size=96)
    assert widest.widest == 96  # 3 points x 32 draws per pass, not 10 x 32
    whole = smoothed_pgd_l2(model, x, y, SIGMA, eps, steps=20, samples=32, seed=0)
    assert adv.shape == x.shape and ((adv - x).norm(dim=1) <= eps + 1e-5).all()
    # each chunk draws other noise, yet on a linear model every point still moves eps straight at the boundary
    assert torch.allclose((adv @ w + b) / w.norm(), (whole @ w + b) / w.norm(), atol=0.02)
    assert len(smoothed_pgd_l2(model, x[:0], y[:0], SIGMA, 0.2, seed=0)) == 0


def test_the_soundness_check_passes_true_certificates_and_catches_inflated_ones():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.linspace(0.2, 0.6, 12) * torch.tensor([1.0, -1.0]).repeat(6))
    y = (torch.tensor([1.0, -1.0]).repeat(6) < 0).long()
    cert = certify_all(model, x, SIGMA, n=4000, seed=0)
    ok = soundness_check(model, x, y, cert, n=4000, alpha=0.001, steps=20, samples=32, seed=1)
    assert ok["passed"] and ok["checked"] == 12 and ok["violations"] == 0
    inflated = type(cert)(cert.prediction, cert.radius * 4, cert.p_lower, cert.counts, cert.sigma)
    bad = soundness_check(model, x, y, inflated, n=4000, alpha=0.001, steps=20, samples=32, seed=1)
    assert not bad["passed"] and bad["violations"] >= 6 and "unsound" in bad["message"]
    assert math.isclose(ok["mean_l2"], float((cert.radius * (1 - 1e-3)).mean()), rel_tol=0.05)
