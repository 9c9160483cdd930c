"""RTDA — Martínez-Martínez, Brown, Karami & Nabavi, "Robust Training with Data Augmentation for
Medical Imaging Classification", W3PHIAI-25 @ AAAI 2025, arXiv 2506.17133, Eq. (10):

    L = CE(f(x + δ), y) + λ · JSD(f(x), f(g_Aug(x)), f(x + δ)),   δ = PGD(x)                (10)

The cross-entropy is on the *adversarial* batch (RobustAugMix, the paper's baseline, puts it on the
clean batch), and the Jensen–Shannon consistency ties the clean, AugMix-augmented and adversarial
predictions together (:func:`medrobust.defenses.augmix.jsd`, AugMix's form with the clamped
mixture). δ is computed from the clean image, not from the augmented one.

Everything except which batch the CE sees is shared with
:class:`medrobust.defenses.augmix.RobustAugMix` (same augmentation, attack, ε choice and forward
pass), so the two differ in exactly that term.

Parameters and where they come from:

* ``jsd_weight`` λ = 12: the paper does not state λ; 12 is AugMix's value and the default of the
  RTDA authors' public code.
* ``norm="l2"``, ``steps=7``: the paper trains with L2-PGD, 7 steps (20 at test time);
  ``step_size=None`` means ``2.5·ε/steps``. ``norm="linf"`` is allowed (then ε values are L∞).
* ε per DICOM Modality (``eps_by_modality``, chosen in :meth:`prepare` from the data's Modality,
  logged; keys are matched case-insensitively): the paper's L2 radii are **2.0 for X-ray** (``CR``,
  ``DX``) and **0.15 for mammography** (``MG``). The paper's ultrasound (``US``) radius could not be
  recovered from the sources available here, so ``US`` and every other modality use the fallback
  ``eps`` (0.5, our choice: ≈ 2/255 root-mean-square per pixel on a 64×64 grey image).
* Image size: an L2 radius ε over ``n`` pixels permits a root-mean-square change of ``ε/sqrt(n)``
  per pixel, so the same per-pixel perturbation needs ε ∝ sqrt(#pixels). The paper's ε were set
  for its own input size, which the available sources do not state (ResNet-18-style classifiers
  commonly use 224×224). By default (``eps_reference_size=0``) ε is used as written, **not
  rescaled**; set ``eps_reference_size: 224`` to read the table as radii for 224×224 images and
  scale them by ``sqrt(H·W)/224`` for the training images (at 64×64: × 0.286).
* ``joint_batch=True``: clean, augmented and adversarial batches go through the model as one
  concatenated batch (batch norm sees the mix, as in AugMix's training loop); ``False`` runs three
  forward passes, as the RTDA authors' code does.

Stats: ``train_acc`` (clean), ``train_adv_acc``, ``train_jsd``, ``train_eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medrobust.defenses.augmix import RobustAugMix, jsd
from medrobust.defenses.base import TRAINING_METHODS


def rtda_loss(logits_clean: torch.Tensor, logits_aug: torch.Tensor, logits_adv: torch.Tensor,
              y: torch.Tensor, jsd_weight: float) -> torch.Tensor:
    """RTDA Eq. (10): ``CE(f(x + δ), y) + λ·JSD(p(x); p(g_Aug(x)); p(x + δ))``.

    Args:
        logits_clean: logits ``[N, K]`` of the clean images.
        logits_aug: logits ``[N, K]`` of the AugMix view.
        logits_adv: logits ``[N, K]`` of the PGD adversarial examples (the only ones the CE sees).
        y: class indices ``[N]``.
        jsd_weight: λ, the weight of the Jensen–Shannon term (:func:`medrobust.defenses.augmix.jsd`).

    Returns:
        A scalar.
    """
    return F.cross_entropy(logits_adv, y) + jsd_weight * jsd(logits_clean, logits_aug, logits_adv)


@TRAINING_METHODS.register()
class RTDA(RobustAugMix):
    """RTDA: adversarial CE + λ·JSD(clean, AugMix view, PGD adversarial example); see the module docstring.

    The constructor is :class:`medrobust.defenses.augmix.RobustAugMix`'s, with the same defaults
    (λ = 12, L2-PGD with 7 steps, the paper's per-modality radii, fallback ε = 0.5).

    Args:
        jsd_weight, norm, eps, eps_by_modality, eps_reference_size: as for ``RobustAugMix``.
        steps, step_size, random_start: as for ``RobustAugMix``.
        severity, width, depth, mix_alpha, ops, joint_batch, seed: as for ``RobustAugMix``.

    Raises:
        ValueError: as :class:`medrobust.defenses.augmix.RobustAugMix`.

    Stats: ``train_acc`` (clean), ``train_adv_acc``, ``train_jsd``, ``train_eps``.
    """

    name = "rtda"

    def combine(self, clean: torch.Tensor, aug: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """RTDA Eq. (10), :func:`rtda_loss`: the CE on the adversarial batch (arguments and return value as
        :meth:`RobustAugMix.combine`)."""
        return rtda_loss(clean, aug, adv, y, self.jsd_weight)


__all__ = ["RTDA", "rtda_loss"]
