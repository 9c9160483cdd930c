"""Where the model looks: Grad-CAM and input-gradient saliency of clean and adversarial test images.

The maps come from captum (PyTorch's interpretability library, kept by the PyTorch team; it works
on any ``nn.Module`` through hooks, where ``grad-cam`` needs OpenCV and a target-layer list per
architecture):

* **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017, arXiv 1610.02391) on the classifier's ``features``, the
  last convolutional feature map of every image backbone, upsampled to the image;
* **input-gradient saliency** (Simonyan et al., "Deep Inside Convolutional Networks", arXiv 1312.6034):
  ``|∂ logit_y / ∂ x|``, the channel maximum.

Both explain the *true* class, so a clean/adversarial pair shows how the evidence moved. The grid
puts, side by side, images the attack did not flip and images it flipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import nn

from medrobust.attacks import eval_mode
from medrobust.attacks.spec import AttackSpec, from_spec
from medrobust.config import eps_label

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Grad-CAM of ``target`` on ``model.features``, upsampled to the images' size and scaled to [0, 1].

    Args:
        model: a :class:`~medrobust.models.Classifier`.
        x: ``[N, C, H, W]`` images on the model's device.
        target: ``[N]`` classes to explain.

    Returns:
        ``[N, H, W]`` maps on the CPU, or None when the backbone has no spatial feature map (an MLP,
        CLIP's pooled embedding).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    features = getattr(model, "features", None)
    if features is None or x.ndim != 4:
        return None
    with eval_mode(model), torch.no_grad():
        fmap = model.forward_features(x[:1])
    if fmap.ndim != 4 or fmap.shape[-1] < 2:
        return None
    with eval_mode(model), torch.enable_grad():
        cam = LayerGradCam(model, features).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    cam = cam.detach().cpu().amax(1)
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def input_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|∂ logit_target / ∂ x|`` (channel maximum), scaled to [0, 1] per image.

    Args:
        model: the classifier.
        x: ``[N, C, H, W]`` images on the model's device.
        target: ``[N]`` classes to explain.

    Returns:
        ``[N, H, W]`` maps on the CPU.
    """
    from captum.attr import Saliency

    with eval_mode(model), torch.enable_grad():
        sal = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True)
    sal = sal.detach().cpu().amax(1)
    return sal / sal.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def pick_examples(robust: np.ndarray, clean_correct: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(up to ``n`` indices the attack left robust, up to ``n`` it flipped), the first ones in test order.

    Args:
        robust: ``[N]`` points that survived the attack.
        clean_correct: ``[N]`` points correct before it.
        n: examples per group.

    Returns:
        (robust indices, flipped indices).
    """
    kept = np.flatnonzero(robust)[:n]
    flipped = np.flatnonzero(clean_correct & ~robust)[:n]
    return kept, flipped


def saliency_grid(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: np.ndarray, clean_correct: np.ndarray,
                  attack: AttackSpec, eps: float, seed: int, n_images: int, classes: tuple[str, ...],
                  path: str | Path) -> bool:
    """Write the PNG grid: per example, the clean image, its Grad-CAM and saliency, then the same for
    its adversarial version (``attack`` at ``eps``, regenerated for these images).

    Args:
        model: the classifier.
        x, y: the test images and classes.
        robust, clean_correct: per test point, from the gate condition.
        attack: the attack that makes the adversarial versions.
        eps: its budget (the gate ε).
        seed: the attack's seed.
        n_images: examples per group (robust ones, then flipped ones).
        classes: class names, for the titles.
        path: where the PNG goes.

    Returns:
        Whether a grid was written (False for vector data or no example).
    """
    if x.ndim != 4:
        return False
    kept, flipped = pick_examples(robust, clean_correct, n_images)
    idx = np.concatenate([kept, flipped]).astype(int)
    if not len(idx):
        return False
    device = next(model.parameters()).device
    xs, ys = x[idx].to(device), y[idx].to(device)
    x_adv, _ = from_spec(attack, model, eps, seed=seed).run(xs, ys, early_stop=False)
    maps = {}
    for name, images in (("clean", xs), ("adversarial", x_adv)):
        with eval_mode(model), torch.no_grad():
            probs = torch.softmax(model(images), 1).cpu()
        maps[name] = (images.detach().cpu(), grad_cam(model, images, ys), input_saliency(model, images, ys), probs)
    cols = ["clean", "Grad-CAM", "saliency", "adversarial", "Grad-CAM", "saliency"]
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(1.9 * len(cols), 2.0 * len(idx)), squeeze=False)
    for r in range(len(idx)):
        group = "not flipped" if r < len(kept) else "flipped"
        for half, name in enumerate(("clean", "adversarial")):
            images, cam, sal, probs = maps[name]
            img = images[r, 0].numpy()
            pred = int(probs[r].argmax())
            panels = [(img, None), (img, cam[r].numpy() if cam is not None else None), (sal[r].numpy(), None)]
            for c, (base, overlay) in enumerate(panels):
                ax = axes[r, 3 * half + c]
                ax.axis("off")
                ax.imshow(base, cmap="gray" if c < 2 else "inferno", vmin=0, vmax=1)
                if overlay is not None:
                    ax.imshow(overlay, cmap="jet", alpha=0.45, vmin=0, vmax=1)
                if c == 1 and overlay is None:
                    ax.text(0.5, 0.5, "no spatial map", ha="center", va="center", transform=ax.transAxes, fontsize=7)
                if c == 0:
                    ax.set_title(f"{name}: {classes[pred]} (P[{classes[int(ys[r])]}]={float(probs[r, int(ys[r])]):.2f})",
                                 fontsize=6.5)
        axes[r, 0].text(-0.08, 0.5, group, rotation=90, ha="right", va="center", transform=axes[r, 0].transAxes,
                        fontsize=7)
    for c, title in enumerate(cols):
        axes[0, c].set_title((axes[0, c].get_title() + "\n" if axes[0, c].get_title() else "") + title, fontsize=7)
    fig.suptitle(f"where the model looks: {attack.key} at ε={eps_label(eps)} (maps explain the true class)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


__all__ = ["grad_cam", "input_saliency", "pick_examples", "saliency_grid"]
