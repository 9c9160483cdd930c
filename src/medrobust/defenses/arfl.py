"""ARFL — Hao, Arefan, Zuley, Berg & Wu, "Adversarially Robust Feature Learning for Breast Cancer
Diagnosis", arXiv 2402.08768, Section 3, Eqs. (1), (2) and (5).

**Eq. (1), the robust loss** on a feature map ``f(θ, x)`` of height H and width W::

    L_robust(θ, x, y) = −(1/HW) Σ_i Σ_j σ( |f_ij(θ, x) · y| ),    y ∈ {±1}

averaged over the batch (:func:`arfl_robust_loss`). The feature map is
``model.forward_features(x)``: the last convolutional feature map ``[N, C, H, W]`` ("we obtain the
feature map from the last convolutional layer"), or the penultimate activations ``[N, D]`` of the
``mlp`` backbone (the paper's two-moon net: "features from the penultimate layer"), whose D units
play the role of the HW positions.

Choices where the paper is silent or ambiguous:

* **Channels.** Eq. (1) has no channel axis. σ(|f·y|) is taken per element, then reduced over the
  channels with ``channel_reduction`` — ``"mean"`` (default: L_robust stays in [−1, −½] for every
  backbone, so λ means the same for a 4-channel toy CNN and VGG16's 512 channels) or ``"sum"``
  (scales with C) — and averaged over the HW positions.
* **The label drops out.** For y ∈ {±1}, |f·y| = |f|, so L_robust does *not* depend on y: it is
  −mean σ(|f|) and, minimised, only pushes feature magnitudes up (after a ReLU, f ≥ 0, the features
  themselves). Binary labels map class 1 → +1, class 0 → −1 (:func:`signed_labels`). The paper is
  binary; with more than two classes any coding with |y| = 1 gives the same value, so the loss is
  well defined for any number of classes and this implementation accepts them (classes ≥ 1 → +1).
* **The sign of the adversarial term.** Eq. (2) adds the robust loss to the clean loss,
  ``L_overall = L_cls + λ·L_robust``, but Eq. (5) as printed *subtracts* it on the adversarial data::

      min_θ E[ (1 − r)·( max_δ L_cls(x + δ) − λ·L_robust(x + δ) ) + r·L_overall(x) ]          (5)

  Since L_robust ≤ 0, "−λ·L_robust" would shrink the adversarial features — the opposite of what
  Section 3.1 says L_robust is for ("input x can be either a standard input ... or an adversarial
  input", "L_robust encourages the model to learn features that are highly correlated with the
  labels"). ``adv_robust_sign = +1`` (default) uses +λ on both terms, consistent with Eq. (2) and
  the text; ``adv_robust_sign = −1`` reproduces Eq. (5) as printed; ``0`` drops the adversarial term.
  :func:`arfl_objective` is the combination, with the sign as an argument.
* **The inner maximisation** maximises L_cls only (Eq. 5's ``max_δ`` is written on L_cls): PGD
  (L∞ by default, or L2) with a random start, or FGSM (``attack="fgsm"``, the paper's two-moon
  setting), run in eval mode with input gradients only (:mod:`medrobust.attacks`).

**r** is the share of clean data exactly as in :mod:`medrobust.defenses.dual_at` (ARFL Eq. 4):
r = 1 is standard training (+ λ·L_robust on the clean data), r = 0 adversarial data only, and for
0 < r < 1 the clean and adversarial batches go through the model as one concatenated batch. With
λ = 0 the loss is exactly :class:`~medrobust.defenses.dual_at.DualAT`'s (same seed, same value).

Defaults: r = 0.5, λ = 10 (the paper's mammography value; it uses λ = 0.5 on two-moon), PGD L∞ with
ε = 0.01 (the paper's mammography ε₁), 7 steps of 2.5·ε/7 (``step_size=None``: Madry et al.'s
rule), mean over channels, ``adv_robust_sign = +1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import FGSM, PGD, PGDL2
from medrobust.attacks.base import Attack
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod

CHANNEL_REDUCTIONS = ("mean", "sum")


def signed_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices → ±1 as the paper's y: class 0 → −1, any other class → +1 (float).

    Args:
        y: class indices (any shape, usually ``[N]``).

    Returns:
        A float32 tensor of the same shape and device with values in {−1, +1}.
    """
    return torch.where(y > 0, 1.0, -1.0).to(torch.float32)


def arfl_robust_loss(features: torch.Tensor, y_signed: torch.Tensor, channel_reduction: str = "mean") -> torch.Tensor:
    """ARFL Eq. (1): ``−(1/HW) Σ_ij σ(|f_ij · y|)``, averaged over the batch.

    Args:
        features: ``[N, C, H, W]`` (a conv feature map; σ(|f·y|) is reduced over C with
            ``channel_reduction``, then averaged over the H·W positions) or ``[N, D]`` (a feature
            vector; the D units are the positions, no channel axis).
        y_signed: ``[N]`` labels in {±1} (:func:`signed_labels`). Since |f·y| = |f| for these, the
            value does not depend on them; they are kept to follow the paper's formula.
        channel_reduction: ``"mean"`` or ``"sum"`` over the channels of a 4-D feature map.

    Returns:
        A scalar in [−1, −½] (``"mean"``; ``"sum"`` multiplies the range by C).

    Raises:
        ValueError: for another feature rank, a label outside {±1} or an unknown reduction.
    """
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(f"arfl: channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")
    if features.ndim not in (2, 4):
        raise ValueError(f"arfl: features must be [N, C, H, W] or [N, D], got shape {tuple(features.shape)}")
    if y_signed.shape != features.shape[:1]:
        raise ValueError(f"arfl: y_signed must have shape [{features.shape[0]}], got {tuple(y_signed.shape)}")
    if not bool((y_signed.abs() == 1).all()):
        raise ValueError("arfl: y_signed must be ±1 (use signed_labels(y))")
    yv = y_signed.to(features.dtype).view(-1, *([1] * (features.ndim - 1)))
    s = torch.sigmoid((features * yv).abs())
    if features.ndim == 4:
        s = s.mean(dim=1) if channel_reduction == "mean" else s.sum(dim=1)  # [N, H, W]
    per_sample = s.flatten(1).mean(dim=1)  # (1/HW) Σ_ij, or (1/D) Σ_d
    return -per_sample.mean()


def arfl_objective(
    ce_clean: torch.Tensor | None,
    robust_clean: torch.Tensor | None,
    ce_adv: torch.Tensor | None,
    robust_adv: torch.Tensor | None,
    r: float,
    lam: float,
    adv_robust_sign: float = 1.0,
) -> torch.Tensor:
    """ARFL Eq. (5): ``r·(L_cls(x) + λ·L_robust(x)) + (1 − r)·(L_cls(x') + s·λ·L_robust(x'))``.

    ``s = adv_robust_sign``: +1 (default) as in Eq. (2), −1 as Eq. (5) is printed. The clean terms
    may be None when r = 0, the adversarial ones when r = 1.

    Args:
        ce_clean: scalar ``L_cls(x)``, the mean cross-entropy on the clean batch (None allowed if r = 0).
        robust_clean: scalar ``L_robust(x)`` (:func:`arfl_robust_loss`; None allowed if r = 0).
        ce_adv: scalar ``L_cls(x')`` on the adversarial batch (None allowed if r = 1).
        robust_adv: scalar ``L_robust(x')`` (None allowed if r = 1).
        r: the share of clean data in [0, 1]; a term whose weight is 0 is left out entirely.
        lam: λ, the weight of the robust loss.
        adv_robust_sign: s, the sign of λ on the adversarial robust term (+1, −1 or 0).

    Returns:
        The scalar objective.

    Raises:
        ValueError: r > 0 and a clean term is None, or r < 1 and an adversarial term is None.
    """
    total: torch.Tensor | None = None
    if r > 0.0:
        if ce_clean is None or robust_clean is None:
            raise ValueError("arfl_objective: r > 0 needs the clean terms")
        total = r * (ce_clean + lam * robust_clean)  # r · L_overall(x), Eq. (2)
    if r < 1.0:
        if ce_adv is None or robust_adv is None:
            raise ValueError("arfl_objective: r < 1 needs the adversarial terms")
        adv = (1.0 - r) * (ce_adv + adv_robust_sign * lam * robust_adv)
        total = adv if total is None else total + adv
    assert total is not None
    return total


def _features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving both ``forward_features(x)`` and the logits (``head(pool(features))``)."""
    if not all(hasattr(model, a) for a in ("forward_features", "pool", "head")):
        raise TypeError("arfl: the model must be a medrobust Classifier (forward_features, pool, head); "
                        f"got {type(model).__name__}")
    feats = model.forward_features(x)
    return feats, model.head(model.pool(feats))


@TRAINING_METHODS.register()
class ARFL(TrainingMethod):
    """Adversarially robust feature learning (Eqs. 1, 2, 5); see the module docstring.

    The model must be a medrobust ``Classifier`` (``forward_features``, ``pool``, ``head``).

    Args:
        r: the share of clean data in [0, 1] (as :class:`~medrobust.defenses.dual_at.DualAT`).
        lam: λ ≥ 0, the weight of L_robust (Eq. 2).
        attack: ``"pgd"`` or ``"fgsm"`` (the inner maximisation of L_cls).
        norm: ``"linf"`` or ``"l2"`` for PGD; FGSM is L∞ only.
        eps: ε, a fraction of the [0, 1] pixel range (L∞) or an L2 radius in the same units.
        steps: PGD iterations (≥ 1; unused by FGSM).
        step_size: PGD step in the units of ``eps``; None: ``2.5·ε/steps``.
        random_start: start PGD at a random point of the ε-ball (else at ``x``).
        channel_reduction: ``"mean"`` or ``"sum"`` of σ(|f·y|) over the feature channels.
        adv_robust_sign: +1 (λ·L_robust on the adversarial data, as Eq. 2), −1 (Eq. 5 as printed) or
            0 (no adversarial robust term).
        seed: makes the PGD random starts reproducible (one attack seed per batch from a local
            generator); None uses the global RNG.

    Raises:
        ValueError: a value outside the ranges above, an unknown ``attack``, ``norm`` or
            ``channel_reduction``, or ``attack="fgsm"`` with ``norm="l2"``.

    Stats: ``train_acc`` and ``train_robust`` (clean; not for r = 0), ``train_adv_acc`` and
    ``train_robust_adv`` (not for r = 1).
    """

    name = "arfl"

    def __init__(
        self,
        r: float = 0.5,
        lam: float = 10.0,
        attack: str = "pgd",
        norm: str = "linf",
        eps: Eps = 0.01,
        steps: int = 7,
        step_size: Eps | None = None,
        random_start: bool = True,
        channel_reduction: str = "mean",
        adv_robust_sign: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(r=r, lam=lam, attack=attack, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, channel_reduction=channel_reduction,
                         adv_robust_sign=adv_robust_sign, seed=seed)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"arfl: r must be in [0, 1], got {r}")
        if lam < 0:
            raise ValueError(f"arfl: lam must be >= 0, got {lam}")
        if attack not in ("pgd", "fgsm"):
            raise ValueError(f"arfl: attack must be 'pgd' or 'fgsm', got {attack!r}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"arfl: norm must be 'linf' or 'l2', got {norm!r}")
        if attack == "fgsm" and norm != "linf":
            raise ValueError("arfl: attack 'fgsm' is L∞ only (norm: linf)")
        if eps < 0 or steps < 1 or (step_size is not None and step_size <= 0):
            raise ValueError("arfl: eps must be >= 0, steps >= 1 and step_size > 0 (or null)")
        if channel_reduction not in CHANNEL_REDUCTIONS:
            raise ValueError(f"arfl: channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")
        if adv_robust_sign not in (-1.0, 0.0, 1.0):
            raise ValueError(f"arfl: adv_robust_sign must be 1 (as Eq. 2), -1 (Eq. 5 as printed) or 0, "
                             f"got {adv_robust_sign}")
        self.r, self.lam, self.attack, self.norm = float(r), float(lam), attack, norm
        self.eps, self.steps, self.random_start = float(eps), int(steps), random_start
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.channel_reduction, self.adv_robust_sign, self.seed = channel_reduction, float(adv_robust_sign), seed

    def make_attack(self, model: nn.Module) -> Attack:
        """The inner maximisation of L_cls (a fresh attack seed per batch).

        Args:
            model: the classifier to attack.

        Returns:
            :class:`medrobust.attacks.FGSM` (``attack="fgsm"``, no random start), else
            :class:`medrobust.attacks.PGD` / :class:`medrobust.attacks.PGDL2` seeded with
            :meth:`attack_seed` (which advances the method's generator).
        """
        if self.attack == "fgsm":
            return FGSM(model, eps=self.eps)
        cls = PGD if self.norm == "linf" else PGDL2
        return cls(model, eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=self.random_start,
                   seed=self.attack_seed())

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """ARFL Eq. (5) (:func:`arfl_objective`) with L_robust (Eq. 1) on the ``forward_features`` map.

        Raises:
            TypeError: the model lacks ``forward_features``, ``pool`` or ``head``.
        """
        ys = signed_labels(y).to(x.device)
        stats: dict[str, float] = {}
        ce_c = rob_c = ce_a = rob_a = None
        if self.r >= 1.0:  # standard training + λ·L_robust: no adversarial data
            feats_c, logits_c = _features_and_logits(model, x)
        else:
            x_adv = self.make_attack(model)(x, y)
            if self.r <= 0.0:
                feats_a, logits_a = _features_and_logits(model, x_adv)
            else:
                feats, logits = _features_and_logits(model, torch.cat([x, x_adv]))
                feats_c, feats_a = feats.split(len(x))
                logits_c, logits_a = logits.split(len(x))
            ce_a = F.cross_entropy(logits_a, y)
            rob_a = arfl_robust_loss(feats_a, ys, self.channel_reduction)
            stats["train_adv_acc"] = (logits_a.argmax(1) == y).float().mean().item()
            stats["train_robust_adv"] = rob_a.item()
        if self.r > 0.0:
            ce_c = F.cross_entropy(logits_c, y)
            rob_c = arfl_robust_loss(feats_c, ys, self.channel_reduction)
            stats["train_acc"] = (logits_c.argmax(1) == y).float().mean().item()
            stats["train_robust"] = rob_c.item()
        loss = arfl_objective(ce_c, rob_c, ce_a, rob_a, self.r, self.lam, self.adv_robust_sign)
        return loss, stats
