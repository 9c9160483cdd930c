"""Grad-CAM and input-gradient saliency (captum), checked against autograd and against the toy task's signal."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.attacks.spec import AttackSpec
from medrobust.evaluation.saliency import grad_cam, input_saliency, pick_examples, saliency_grid


def _reference_cam(model, x, target):
    """Grad-CAM by hand: ReLU(Σ_k mean_ij(∂y_c/∂A_k) A_k), bilinear to the image, max-scaled."""
    model.eval()
    fmap = model.forward_features(x).detach().requires_grad_(True)
    logits = model.head(model.pool(fmap))
    score = logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, fmap)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def test_input_saliency_is_the_absolute_input_gradient(trained):
    model, x, y = trained
    xs, ys = x[:6], y[:6]
    sal = input_saliency(model, xs, ys)
    model.eval()  # the fixture is shared: the reference runs in the mode input_saliency uses
    xg = xs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, ys[:, None]).sum(), xg)
    ref = g.abs().amax(1)
    ref = ref / ref.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(sal, ref, rtol=1e-5, atol=1e-6)
    assert sal.shape == (6, 16, 16) and float(sal.max()) == 1.0


def test_grad_cam_matches_the_definition_and_finds_the_square(trained):
    model, x, y = trained
    pos = y == 1
    xs, ys = x[pos][:12], y[pos][:12]
    cam = grad_cam(model, xs, ys)
    assert cam is not None and cam.shape == (12, 16, 16)
    torch.testing.assert_close(cam, _reference_cam(model, xs, ys), rtol=1e-4, atol=1e-5)
    assert float(cam.min()) >= 0 and torch.allclose(cam.flatten(1).amax(1), torch.ones(12))


def test_input_saliency_finds_the_square(trained):
    model, x, y = trained
    pos = y == 1
    sal = input_saliency(model, x[pos][:12], y[pos][:12])
    # class 1 is a faint square at rows/cols 4..9: the gradient is larger there than elsewhere
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:10, 4:10] = True
    assert float(sal[:, inside].mean()) > 1.5 * float(sal[:, ~inside].mean())


def test_pick_examples_takes_robust_then_flipped_points():
    robust = np.array([True, False, True, False, False, True])
    clean_correct = np.array([True, True, True, False, True, True])
    kept, flipped = pick_examples(robust, clean_correct, 2)
    assert kept.tolist() == [0, 2] and flipped.tolist() == [1, 4]


def test_saliency_grid_writes_one_png_with_a_row_per_example(trained, tmp_path):
    import matplotlib.image as mpimg

    model, x, y = trained
    xs, ys = x[:20], y[:20]
    with torch.no_grad():
        correct = (model(xs).argmax(1) == ys).numpy()
    robust = correct.copy()
    robust[::2] = False
    spec = AttackSpec(name="pgd", norm="linf", eps=(8 / 255,), steps=5)
    assert saliency_grid(model, xs, ys, robust, correct, spec, 8 / 255, 0, 2, ("normal", "lesion"), tmp_path / "s.png")
    image = mpimg.imread(tmp_path / "s.png")
    assert image.shape[0] > 300 and image.shape[1] > 900  # 4 rows x 6 panels
    assert not saliency_grid(model, xs, ys, np.zeros(20, bool), np.zeros(20, bool), spec, 8 / 255, 0, 2,
                             ("normal", "lesion"), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
