"""The differentiable GLCM (domain assimilation's texture loss) against scikit-image's reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import feature as skimage_feature  # the reference (a pinned test dependency)

from medrobust.defenses.glcm import (
    EIGHT_ANGLES,
    FEATURES,
    feature_distance,
    glcm,
    glcm_features,
    glcm_loss,
    glcm_offsets,
    scale_features,
    soft_quantize,
    to_grey,
)

LEVELS = 5


def integer_image(levels: int = LEVELS, shape: tuple[int, int] = (7, 9), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, levels, shape).astype(np.uint8)


def as_grey(img: np.ndarray, levels: int = LEVELS) -> torch.Tensor:
    """Integer levels 0 … L−1 as a float image in [0, 1] on the level centres k / (L − 1)."""
    return torch.tensor(img / (levels - 1), dtype=torch.float64)[None, None]


def skimage_features(img: np.ndarray, levels: int, angles, symmetric: bool) -> np.ndarray:
    p = skimage_feature.graycomatrix(img, [3], list(angles), levels=levels, symmetric=symmetric, normed=True)
    return np.stack([skimage_feature.graycoprops(p, f)[0] for f in FEATURES], axis=-1)  # [angles, 5]


def test_offsets_follow_skimage_rounding():
    # (round(3 sin θ), round(3 cos θ)): the diagonals are (±2, ±2) since 3·cos 45° = 2.12
    assert glcm_offsets(3, EIGHT_ANGLES) == [(0, 3), (2, 2), (3, 0), (2, -2), (0, -3), (-2, -2), (-3, 0), (-2, 2)]
    assert glcm_offsets(1, [0.0, math.pi / 2]) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("symmetric", [False, True])
def test_hard_matrices_equal_skimage_graycomatrix(symmetric):
    img = integer_image()
    ref = skimage_feature.graycomatrix(img, [3], list(EIGHT_ANGLES), levels=LEVELS, symmetric=symmetric, normed=True)
    ours = glcm(soft_quantize(as_grey(img), LEVELS, hard=True), glcm_offsets(3, EIGHT_ANGLES), symmetric)
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), ref[:, :, 0, :], atol=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_hard_features_equal_skimage_graycoprops(symmetric, seed):
    img = integer_image(seed=seed)
    ours = glcm_features(as_grey(img), levels=LEVELS, hard=True, symmetric=symmetric, eps=0.0)[0].numpy()
    np.testing.assert_allclose(ours, skimage_features(img, LEVELS, EIGHT_ANGLES, symmetric), atol=1e-6, rtol=0)


def test_eight_orientations_repeat_skimages_four_directions():
    # θ + 180° is the transpose of θ, and every feature is transpose-invariant: features at
    # 180°…315° repeat those at 0°…135°; the 8-orientation mean = skimage's 4-direction mean
    img = integer_image(seed=3)
    f8 = glcm_features(as_grey(img), levels=LEVELS, hard=True, eps=0.0)[0]
    np.testing.assert_allclose(f8[4:].numpy(), f8[:4].numpy(), atol=1e-12)
    four = skimage_features(img, LEVELS, EIGHT_ANGLES[:4], symmetric=False)
    np.testing.assert_allclose(f8.mean(0).numpy(), four.mean(0), atol=1e-6)
    # the symmetric matrix of θ is the normalised sum of the non-symmetric θ and θ + 180°
    p = glcm(soft_quantize(as_grey(img), LEVELS, hard=True), glcm_offsets(3, EIGHT_ANGLES))[0]
    psym = glcm(soft_quantize(as_grey(img), LEVELS, hard=True), glcm_offsets(3, EIGHT_ANGLES[:4]), symmetric=True)[0]
    np.testing.assert_allclose(psym.numpy(), ((p[:4] + p[4:]) / 2).numpy(), atol=1e-12)


def test_features_hand_computed_on_a_two_level_stripe():
    # columns 0 1 0 1 0 1 … at distance 1, angle 0: every pair is (0,1) or (1,0) → P = [[0, ½], [½, 0]]
    # with symmetric counting: ASM = ½, contrast = 1, homogeneity = ½, dissimilarity = 1, correlation = −1
    img = np.tile(np.array([0, 1], dtype=np.uint8), (4, 3))
    feats = glcm_features(as_grey(img, 2), levels=2, distance=1, angles=[0.0], symmetric=True, hard=True, eps=0.0)
    np.testing.assert_allclose(feats[0, 0].numpy(), [0.5, 1.0, 0.5, -1.0, 1.0], atol=1e-12)
    # a flat image: one occupied cell, σ = 0 → correlation 1 (skimage's convention)
    flat = glcm_features(torch.zeros(1, 1, 5, 5, dtype=torch.float64), levels=4, distance=1, angles=[0.0], hard=True)
    np.testing.assert_allclose(flat[0, 0].numpy(), [1.0, 0.0, 1.0, 1.0, 0.0], atol=1e-12)


def test_soft_features_approach_hard_as_temperature_goes_to_zero():
    def errors(grey: torch.Tensor, temperatures: tuple[float, ...]) -> list[float]:
        hard = glcm_features(grey, levels=8, hard=True, eps=0.0)
        return [(glcm_features(grey, levels=8, temperature=t, eps=0.0) - hard).abs().max().item()
                for t in temperatures]

    # grey values on the level centres: the error shrinks monotonically to 0
    on_centres = errors(as_grey(integer_image(levels=8, shape=(10, 10), seed=4), 8), (1.0, 0.3, 0.1, 0.03, 1e-3))
    assert all(a > b for a, b in zip(on_centres[:3], on_centres[1:4])), on_centres
    assert on_centres[0] > 1e-2 and on_centres[-1] < 1e-6  # soft at T = 1, hard at T → 0
    # arbitrary grey values: pixels near a bin edge need a smaller T, but the limit is the hard GLCM
    g = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    anywhere = errors(g, (1.0, 0.01, 1e-4))
    assert anywhere[0] > anywhere[1] > anywhere[2] and anywhere[2] < 1e-6, anywhere


def test_soft_assignment_is_a_distribution_centred_on_the_level():
    g = torch.tensor([0.0, 0.5, 1.0, 0.3], dtype=torch.float64).view(1, 1, 1, 4)
    a = soft_quantize(g, 5, temperature=0.5)
    np.testing.assert_allclose(a.sum(1).numpy(), 1.0, atol=1e-12)
    # g = 0.5 sits on level 2 of 5 (u = 2): neighbours weigh e^{-1/0.5} = e^{-2} relative to it
    assert a[0, 1, 0, 1].item() / a[0, 2, 0, 1].item() == pytest.approx(math.exp(-2.0), rel=1e-9)
    assert soft_quantize(g, 5, hard=True)[0, :, 0, 3].argmax().item() == 1  # round(0.3·4 = 1.2) = 1


def test_gradient_w_r_t_the_image_is_finite_and_nonzero():
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(2, 1, 12, 12, generator=gen)
    rgb = torch.rand(2, 3, 12, 12, generator=gen).requires_grad_(True)
    loss = glcm_loss(original, rgb, levels=8)
    (grad,) = torch.autograd.grad(loss, rgb)
    assert loss.item() > 0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # features' gradient through the grey image, also for a nearly flat image (correlation's eps)
    flat = torch.full((1, 1, 8, 8), 0.5).add_(1e-4 * torch.rand(1, 1, 8, 8, generator=gen)).requires_grad_(True)
    (gflat,) = torch.autograd.grad(glcm_features(flat, levels=8).sum(), flat)
    assert torch.isfinite(gflat).all()


def test_loss_is_zero_for_the_grey_image_itself_and_hand_computed_otherwise():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 10, 10, generator=gen)
    assert glcm_loss(x, x.repeat(1, 3, 1, 1)).item() == pytest.approx(0.0, abs=1e-6)  # luma of grey RGB = grey
    rgb = torch.rand(3, 3, 10, 10, generator=gen)
    kw = dict(levels=8, temperature=0.5)
    f_ref = scale_features(glcm_features(x, **kw), 8)
    f_out = scale_features(glcm_features(to_grey(rgb), **kw), 8)
    l1 = (f_out - f_ref).abs().sum(-1).mean()  # Σ over 5 features, mean over 8 orientations × 3 images
    l2 = ((f_out - f_ref) ** 2).sum(-1).mean()
    assert glcm_loss(x, rgb, metric="l1", **kw).item() == pytest.approx(l1.item(), rel=1e-6)
    assert glcm_loss(x, rgb, metric="l2", **kw).item() == pytest.approx(l2.item(), rel=1e-6)
    assert feature_distance(torch.zeros(2, 5), torch.tensor([[1.0, -2, 0, 0, 0], [0, 0, 3, 0, 0]])).item() == 3.0
    with pytest.raises(ValueError, match="l1, l2"):
        feature_distance(f_ref, f_out, "cosine")


def test_scaled_features_are_bounded_and_grey_conversion_rules():
    img = integer_image(levels=16, shape=(12, 12), seed=5)
    f = scale_features(glcm_features(as_grey(img, 16), levels=16, hard=True), 16)
    assert (f[..., [0, 1, 2, 4]] >= 0).all() and (f[..., [0, 1, 2, 4]] <= 1).all()
    assert (f[..., 3].abs() <= 1 + 1e-9).all()
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert to_grey(rgb, "bt601").item() == pytest.approx(0.299 + 0.5 * 0.587)
    assert to_grey(rgb, "bt709").item() == pytest.approx(0.2126 + 0.5 * 0.7152)
    assert to_grey(rgb, "mean").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="bt601"):
        to_grey(rgb, "lab")
