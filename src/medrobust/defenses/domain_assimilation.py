"""Domain assimilation — Chen & Luo, "Adversarial-Robust Transfer Learning for Medical Imaging via
Domain Assimilation", arXiv 2402.16005 (PAKDD 2024, LNCS 14648, pp. 335–349).

Not adversarial training: the model is fine-tuned on clean images only. Robustness is meant to come
from narrowing the gap between grey medical images and the natural images the backbone was
pretrained on. The architecture is ``input (1 channel) → texture module → colour module → pretrained
backbone`` (:class:`medrobust.models.assimilation.AssimilationAdapter`, set through
``model_overrides``: adapter ``assimilation`` and the ImageNet mean/std for its RGB output; the paper
fine-tunes ImageNet ResNet18/50 and DenseNet121 — ``train.model.pretrained``). The objective joins
the cross-entropy with the GLCM texture-preservation loss (:func:`medrobust.defenses.glcm.glcm_loss`:
the distance between the ASM, contrast, homogeneity, correlation and dissimilarity of the grey-level
co-occurrence matrices, distance 3, 8 orientations, of the original image and of the colourised
image), which "is propagated backward through the entire network":

    L = (1 − α) · CE(f(x), y) + α · L_GLCM(x, adapter(x)),   α = 0.98         (weighting = alpha_glcm)

**Which term α weights.** The paper's own equation was not retrievable here (only the abstract of
arXiv 2402.16005); the seed summary says: "The model is fine-tuned on medical datasets with this loss
[the GLCM loss] weighted at α=0.98, balancing cross-entropy and texture preservation objectives". We
follow it: α weights the GLCM term in a convex combination ("balancing"). This is less lopsided than
it looks: the GLCM term depends on the adapter only, so the backbone and head are trained by
``(1 − α)·CE`` alone, and with Adam (scale-free per parameter) a constant factor on their only loss
hardly changes their updates; the adapter receives ``0.02·∂CE + 0.98·∂L_GLCM``, i.e. it is held
close to the original texture and moves only as far as classification pays for. ``weighting``
selects the other readings: ``alpha_ce`` = ``α·CE + (1 − α)·L_GLCM`` (α on the cross-entropy, the GLCM
term a light regulariser) and ``additive`` = ``CE + α·L_GLCM``.

Defaults: α = 0.98, GLCM with 16 soft grey levels (temperature 0.5), distance 3, the 8 orientations
0°…315° (non-symmetric, skimage's angle convention), L1 distance between the features after putting
contrast and dissimilarity on [0, 1], BT.601 luma for RGB → grey. See
:mod:`medrobust.defenses.glcm` for what each of these means and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod
from medrobust.defenses.glcm import LUMA, glcm_loss
from medrobust.models import IMAGENET_MEAN, IMAGENET_STD

WEIGHTINGS = ("alpha_ce", "alpha_glcm", "additive")


def assimilation_loss(ce: torch.Tensor, glcm: torch.Tensor, alpha: float, weighting: str = "alpha_glcm") -> torch.Tensor:
    """Join the cross-entropy and the GLCM loss.

    ``alpha_ce``: ``α·CE + (1−α)·GLCM``; ``alpha_glcm``: ``(1−α)·CE + α·GLCM``; ``additive``: ``CE + α·GLCM``.

    Args:
        ce: the scalar cross-entropy of the classifier.
        glcm: the scalar GLCM texture loss (:func:`medrobust.defenses.glcm.glcm_loss`).
        alpha: α, the weight (not range-checked here; :class:`DomainAssimilation` checks it).
        weighting: one of :data:`WEIGHTINGS` (default ``alpha_glcm``: α on the GLCM term).

    Returns:
        The combined scalar loss.

    Raises:
        ValueError: an unknown ``weighting``.
    """
    if weighting == "alpha_ce":
        return alpha * ce + (1.0 - alpha) * glcm
    if weighting == "alpha_glcm":
        return (1.0 - alpha) * ce + alpha * glcm
    if weighting == "additive":
        return ce + alpha * glcm
    raise ValueError(f"weighting: {weighting!r} is not allowed; allowed values: {', '.join(WEIGHTINGS)}")


@TRAINING_METHODS.register()
class DomainAssimilation(TrainingMethod):
    """Domain assimilation (Chen & Luo, arXiv 2402.16005): clean CE joined with the GLCM texture loss.

    Needs a model built with the ``assimilation`` adapter (``model_overrides``); only clean images
    are used (no attack).

    Args:
        alpha: α, in [0, 1] for ``alpha_ce`` / ``alpha_glcm``, ≥ 0 for ``additive``.
        weighting: ``"alpha_glcm"`` (``(1−α)·CE + α·L_GLCM``), ``"alpha_ce"`` or ``"additive"``
            (:func:`assimilation_loss`).
        levels: L ≥ 2, the number of soft grey levels of the GLCM.
        distance: the co-occurrence offset in pixels (≥ 1), along the 8 orientations 0°…315°.
        temperature: T > 0 of the soft quantisation, in squared grey-level units.
        symmetric: count each pair in both orders (``P + Pᵀ``, skimage's ``symmetric=True``).
        metric: ``"l1"`` or ``"l2"`` distance between the GLCM feature vectors.
        luma: RGB → grey weights of the colourised image, a key of :data:`medrobust.defenses.glcm.LUMA`.
        scale_features: divide contrast by (L−1)² and dissimilarity by L−1 before the distance.

    Raises:
        ValueError: an unknown ``weighting``, ``metric`` or ``luma``, or a value out of range.

    Stats: ``train_acc``, ``train_ce``, ``train_glcm``.
    """

    name = "domain_assimilation"
    image_only = True
    model_overrides = {"adapter": "assimilation", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def __init__(
        self,
        alpha: float = 0.98,
        weighting: str = "alpha_glcm",
        levels: int = 16,
        distance: int = 3,
        temperature: float = 0.5,
        symmetric: bool = False,
        metric: str = "l1",
        luma: str = "bt601",
        scale_features: bool = True,
    ) -> None:
        super().__init__(alpha=alpha, weighting=weighting, levels=levels, distance=distance,
                         temperature=temperature, symmetric=symmetric, metric=metric, luma=luma,
                         scale_features=scale_features)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"domain_assimilation: weighting {weighting!r} is not allowed; "
                             f"allowed values: {', '.join(WEIGHTINGS)}")
        if alpha < 0 or (weighting != "additive" and alpha > 1):
            raise ValueError(f"domain_assimilation: alpha must be in [0, 1] for weighting {weighting!r}, got {alpha}")
        if levels < 2 or distance < 1 or temperature <= 0:
            raise ValueError("domain_assimilation: levels must be >= 2, distance >= 1 and temperature > 0")
        if metric not in ("l1", "l2"):
            raise ValueError(f"domain_assimilation: metric {metric!r} is not allowed; allowed values: l1, l2")
        if luma not in LUMA:
            raise ValueError(f"domain_assimilation: luma {luma!r} is not allowed; allowed values: {', '.join(LUMA)}")
        self.alpha, self.weighting = float(alpha), weighting
        self.glcm_kw = dict(levels=int(levels), distance=int(distance), temperature=float(temperature),
                            symmetric=bool(symmetric), metric=metric, luma=luma, scale=bool(scale_features))

    def warmup_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's own loss (:meth:`loss`): it has no attack to warm up to, and the GLCM texture
        constraint must hold on the adapter from the first step (plain CE would let it drift)."""
        return self.loss(model, x, y)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``assimilation_loss(CE(f(x), y), L_GLCM(x, adapter(x)))``, by default ``(1 − α)·CE + α·L_GLCM``.

        Raises:
            ValueError: the model has no adapter, or the adapter's output does not have 3 channels.
        """
        adapter = getattr(model, "adapter", None)
        if adapter is None:
            raise ValueError("domain_assimilation needs a Classifier with the 'assimilation' adapter")
        colourised = adapter(x)
        if colourised.shape[1] != 3:
            raise ValueError(f"domain_assimilation: the adapter must output 3 channels, got {colourised.shape[1]} "
                             "(build the model with adapter='assimilation')")
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        texture = glcm_loss(x, colourised, **self.glcm_kw)
        loss = assimilation_loss(ce, texture, self.alpha, self.weighting)
        return loss, {
            "train_acc": (logits.argmax(1) == y).float().mean().item(),
            "train_ce": ce.item(),
            "train_glcm": texture.item(),
        }
