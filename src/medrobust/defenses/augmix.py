"""AugMix and RobustAugMix: a Jensen–Shannon consistency loss between clean, augmented and
(for RobustAugMix) adversarial predictions.

**AugMix** — Hendrycks et al., ICLR 2020, Eq. (1)–(2) ("Jensen-Shannon Divergence Consistency
Loss")::

    L = CE(f(x), y) + λ · JS(p_clean; p_augmix1; p_augmix2),                                  (1)
    JS(p_1; …; p_M) = (1/M) Σ_m KL(p_m ‖ M̄),  M̄ = (1/M) Σ_m p_m                                (2)

with two independent AugMix views (:func:`medrobust.defenses.augment.augmix`) and λ = 12 (the
paper's setting). **RobustAugMix** — Martínez-Martínez & Brown, "RobustAugMix: Joint Optimization of
Natural and Adversarial Robustness", ML Safety Workshop @ NeurIPS 2022; the baseline the RTDA paper
("Robust Training with Data Augmentation for Medical Imaging Classification", arXiv 2506.17133)
compares against — replaces the second AugMix view by a PGD adversarial example of the clean image::

    L = CE(f(x), y) + λ · JS(p(x); p(g_Aug(x)); p(x + δ)),   δ = PGD(x)

:func:`jsd` follows AugMix's reference code: ``p_m = softmax`` (here ``exp(log_softmax)``), the
mixture is clamped to ``[1e-7, 1]`` before its log (so a KL cannot explode when every ``p_m``
gives a class ~0 probability), each KL is ``F.kl_div(..., reduction="batchmean")`` (sum over
classes, mean over the batch), and the M KLs are averaged. It is symmetric in its arguments and
lies in ``[0, log M]``.

Choices (parameters):

* ``joint_batch=True``: the clean, augmented and adversarial batches go through the model as one
  concatenated batch, as AugMix's reference training loop does, so batch norm normalises with the
  statistics of the mix (and its running statistics track the mix). ``False`` runs three separate
  forward passes (each batch normalised by its own statistics, running stats updated three times),
  which is what the RTDA authors' public code does.
* The adversarial example is PGD on the cross-entropy, from the *clean* image, in eval mode with
  input gradients only (:class:`medrobust.attacks.PGDL2` / :class:`medrobust.attacks.PGD`). The
  RTDA paper uses L2-PGD with 7 training steps; ``step_size=None`` means ``2.5·ε/steps`` (Madry et
  al.; also the RTDA authors' code), relative to the ε actually used.
* ε per modality: see :class:`RobustAugMix` and :mod:`medrobust.defenses.rtda`.
* AugMix parameters (``severity``, ``width``, ``depth``, ``mix_alpha``, ``ops``) as in
  :mod:`medrobust.defenses.augment`; the op list includes contrast.

Stats: ``train_acc`` (clean), ``train_jsd`` and ``train_aug_acc`` (first AugMix view) for AugMix;
``train_acc``, ``train_adv_acc``, ``train_jsd``, ``train_eps`` for RobustAugMix / RTDA.
``seed`` (optional) seeds a local generator (augmentation draws and one attack seed per batch) that
advances from batch to batch; ``None`` uses the global RNG.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import PGD, PGDL2
from medrobust.defenses.augment import augmix, check_augmix_params, parse_ops
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod

log = logging.getLogger(__name__)

#: AugMix's clamp of the mixture distribution before its log
MIXTURE_FLOOR = 1e-7

#: L2 radii from the RTDA paper (Section 4): X-ray (CR/DX) 2.0, mammography (MG) 0.15
RTDA_EPS_BY_MODALITY: dict[str, float] = {"MG": 0.15, "CR": 2.0, "DX": 2.0}


def jsd(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence among the M softmax distributions of ``logits`` (AugMix Eq. 2).

    ``(1/M) Σ_m KL(p_m ‖ M̄)`` with ``M̄ = clamp(mean_m p_m, 1e-7, 1)``, KL summed over classes and
    averaged over the batch.

    Args:
        *logits: M ≥ 2 logit tensors ``[N, K]`` of the same shape (e.g. clean, augmented, adversarial).

    Returns:
        A scalar in ``[0, log M]``, symmetric in its arguments; gradients flow through every input.

    Raises:
        ValueError: fewer than two logit tensors.

    Example:
        >>> a = torch.tensor([[0.0, 0.0]])
        >>> float(jsd(a, a, a))
        0.0
    """
    if len(logits) < 2:
        raise ValueError(f"jsd needs at least 2 distributions, got {len(logits)}")
    log_ps = [F.log_softmax(z, dim=1) for z in logits]
    mixture = torch.stack([lp.exp() for lp in log_ps]).mean(0)
    log_mixture = torch.clamp(mixture, MIXTURE_FLOOR, 1.0).log()
    kls = [F.kl_div(log_mixture, lp, reduction="batchmean", log_target=True) for lp in log_ps]
    return torch.stack(kls).mean()


def augmix_loss(logits_clean: torch.Tensor, logits_aug1: torch.Tensor, logits_aug2: torch.Tensor,
                y: torch.Tensor, jsd_weight: float) -> torch.Tensor:
    """AugMix Eq. (1): ``CE(f(x), y) + λ·JS(p(x); p(aug₁); p(aug₂))``.

    Args:
        logits_clean: logits ``[N, K]`` of the clean images (the only ones the CE sees).
        logits_aug1: logits ``[N, K]`` of the first AugMix view.
        logits_aug2: logits ``[N, K]`` of the second AugMix view.
        y: class indices ``[N]``.
        jsd_weight: λ, the weight of the Jensen–Shannon term (:func:`jsd`).

    Returns:
        A scalar.
    """
    return F.cross_entropy(logits_clean, y) + jsd_weight * jsd(logits_clean, logits_aug1, logits_aug2)


def robust_augmix_loss(logits_clean: torch.Tensor, logits_aug: torch.Tensor, logits_adv: torch.Tensor,
                       y: torch.Tensor, jsd_weight: float) -> torch.Tensor:
    """RobustAugMix: ``CE(f(x), y) + λ·JS(p(x); p(g_Aug(x)); p(x + δ))`` — CE on the clean batch.

    Args:
        logits_clean: logits ``[N, K]`` of the clean images (the only ones the CE sees).
        logits_aug: logits ``[N, K]`` of the AugMix view.
        logits_adv: logits ``[N, K]`` of the PGD adversarial examples.
        y: class indices ``[N]``.
        jsd_weight: λ, the weight of the Jensen–Shannon term (:func:`jsd`).

    Returns:
        A scalar.
    """
    return F.cross_entropy(logits_clean, y) + jsd_weight * jsd(logits_clean, logits_aug, logits_adv)


def forward_views(model: nn.Module, views: list[torch.Tensor], joint_batch: bool) -> list[torch.Tensor]:
    """Logits of each batch in ``views``: one concatenated forward pass, or one pass each.

    Args:
        model: the classifier, in the caller's mode.
        views: batches ``[N_i, C, H, W]`` with the same ``C, H, W``.
        joint_batch: True: one forward pass over ``torch.cat(views)`` (batch norm sees the mix);
            False: one forward pass per view.

    Returns:
        One logit tensor ``[N_i, K]`` per view, in the order of ``views``.
    """
    if joint_batch:
        return list(model(torch.cat(views)).split([len(v) for v in views]))
    return [model(v) for v in views]


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


class _AugMixParams:
    """Validated AugMix view parameters shared by the three methods."""

    def _set_augmix(self, severity: int, width: int, depth: int, mix_alpha: float, ops: str) -> None:
        check_augmix_params(severity, width, depth, mix_alpha)
        self.severity, self.width, self.depth = int(severity), int(width), int(depth)
        self.mix_alpha, self.ops = float(mix_alpha), parse_ops(ops)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One AugMix view of ``x`` with the validated parameters (:func:`medrobust.defenses.augment.augmix`).

        Args:
            x: float images ``[N, C, H, W]`` in [0, 1].
            generator: source of all augmentation draws (advanced); None uses the global torch RNG.

        Returns:
            The augmented batch, same shape, dtype and device, in [0, 1], without gradient.
        """
        return augmix(x, generator, severity=self.severity, width=self.width, depth=self.depth,
                      alpha=self.mix_alpha, ops=self.ops)


@TRAINING_METHODS.register()
class AugMix(_AugMixParams, TrainingMethod):
    """AugMix (Hendrycks et al. 2020): clean CE + λ·JSD over the clean image and two AugMix views.

    Args:
        jsd_weight: λ ≥ 0, the weight of the Jensen–Shannon term (AugMix's 12).
        severity: upper bound of the op intensity, 1..10.
        width: number of chains k per view (≥ 1).
        depth: ops per chain; -1 draws 1..3 per chain.
        mix_alpha: α > 0, the Dirichlet / Beta concentration of the mixing weights.
        ops: comma-separated op names (:data:`medrobust.defenses.augment.DEFAULT_OPS`); ``""``: all.
        joint_batch: one concatenated forward pass over clean and both views (else three passes).
        seed: seeds a local generator for the augmentation draws (advancing from batch to batch);
            None uses the global RNG.

    Raises:
        ValueError: ``jsd_weight`` < 0, an AugMix parameter out of range, or an unknown or repeated op.

    Stats: ``train_acc`` (clean), ``train_aug_acc`` (first view), ``train_jsd``.
    """

    name = "augmix"
    image_only = True

    def __init__(
        self,
        jsd_weight: float = 12.0,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        mix_alpha: float = 1.0,
        ops: str = "",
        joint_batch: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(jsd_weight=jsd_weight, severity=severity, width=width, depth=depth, mix_alpha=mix_alpha,
                         ops=ops, joint_batch=joint_batch, seed=seed)
        if jsd_weight < 0:
            raise ValueError(f"augmix: jsd_weight must be >= 0, got {jsd_weight}")
        self._set_augmix(severity, width, depth, mix_alpha, ops)
        self.jsd_weight, self.joint_batch, self.seed = float(jsd_weight), bool(joint_batch), seed

    def make_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent AugMix views of ``x`` (advances the generator).

        Args:
            x: float images ``[N, C, H, W]`` in [0, 1].

        Returns:
            Two augmented batches of the same shape, in [0, 1], without gradient.
        """
        gen = self.generator(x.device)
        return self.augment(x, gen), self.augment(x, gen)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """AugMix Eq. (1) (:func:`augmix_loss`) over the clean batch and two AugMix views."""
        x_aug1, x_aug2 = self.make_views(x)
        clean, aug1, aug2 = forward_views(model, [x, x_aug1, x_aug2], self.joint_batch)
        consistency = jsd(clean, aug1, aug2)
        loss = F.cross_entropy(clean, y) + self.jsd_weight * consistency
        return loss, {"train_acc": _acc(clean, y), "train_aug_acc": _acc(aug1, y), "train_jsd": consistency.item()}


@TRAINING_METHODS.register()
class RobustAugMix(_AugMixParams, TrainingMethod):
    """RobustAugMix: clean CE + λ·JSD(clean, AugMix view, PGD adversarial example).

    ε is chosen per DICOM Modality in :meth:`prepare` (``eps_by_modality``, else ``eps``) and, with
    ``eps_reference_size > 0``, an L2 ε is rescaled from a ``reference × reference`` image to the
    training images' size: ``ε · sqrt(H·W) / reference``. An L2 ball of radius ε over ``n`` pixels
    allows a root-mean-square change of ``ε / sqrt(n)`` per pixel, so the *same per-pixel*
    perturbation needs ε ∝ sqrt(#pixels) (the channel count is assumed equal to the reference's).
    L∞ budgets are per pixel already and are never rescaled.

    Args:
        jsd_weight: λ ≥ 0, the weight of the Jensen–Shannon term.
        norm: ``"l2"`` (:class:`medrobust.attacks.PGDL2`) or ``"linf"`` (:class:`medrobust.attacks.PGD`).
        eps: fallback ε for modalities not in ``eps_by_modality``: an L2 radius of [0, 1] images, or
            a fraction of the [0, 1] pixel range for L∞.
        eps_by_modality: DICOM Modality → ε (keys matched case-insensitively); None:
            :data:`RTDA_EPS_BY_MODALITY` (the RTDA paper's L2 radii; ``{}`` uses ``eps`` everywhere).
        eps_reference_size: side of the square image the ε values were set for; > 0 rescales an L2 ε
            by ``sqrt(H·W) / eps_reference_size``; 0: no rescaling.
        steps: PGD iterations (≥ 1).
        step_size: PGD step in the units of ε; None: ``2.5·ε/steps`` of the ε actually used.
        random_start: start PGD at a random point of the ε-ball (else at ``x``).
        severity, width, depth, mix_alpha, ops: the AugMix view's parameters, as in :class:`AugMix`.
        joint_batch: one concatenated forward pass over clean, augmented and adversarial batches
            (else three passes).
        seed: seeds a local generator for the augmentation draws and one attack seed per batch;
            None uses the global RNG.

    Raises:
        ValueError: ``jsd_weight``, ``eps``, an ``eps_by_modality`` value or ``eps_reference_size``
            negative, an unknown ``norm``, ``steps`` < 1, ``step_size`` ≤ 0, an AugMix parameter out
            of range, or an unknown or repeated op.

    Stats: ``train_acc`` (clean), ``train_adv_acc``, ``train_jsd``, ``train_eps``.
    """

    name = "robust_augmix"
    image_only = True

    def __init__(
        self,
        jsd_weight: float = 12.0,
        norm: str = "l2",
        eps: Eps = 0.5,
        eps_by_modality: dict[str, Eps] | None = None,
        eps_reference_size: int = 0,
        steps: int = 7,
        step_size: Eps | None = None,
        random_start: bool = True,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        mix_alpha: float = 1.0,
        ops: str = "",
        joint_batch: bool = True,
        seed: int | None = None,
    ) -> None:
        table = dict(RTDA_EPS_BY_MODALITY if eps_by_modality is None else eps_by_modality)
        super().__init__(jsd_weight=jsd_weight, norm=norm, eps=eps, eps_by_modality=table,
                         eps_reference_size=eps_reference_size, steps=steps, step_size=step_size,
                         random_start=random_start, severity=severity, width=width, depth=depth,
                         mix_alpha=mix_alpha, ops=ops, joint_batch=joint_batch, seed=seed)
        if jsd_weight < 0:
            raise ValueError(f"{self.name}: jsd_weight must be >= 0, got {jsd_weight}")
        if norm not in ("l2", "linf"):
            raise ValueError(f"{self.name}: norm must be 'l2' or 'linf', got {norm!r}")
        if eps < 0 or any(v < 0 for v in table.values()):
            raise ValueError(f"{self.name}: eps and every eps_by_modality value must be >= 0")
        if eps_reference_size < 0:
            raise ValueError(f"{self.name}: eps_reference_size must be >= 0 (0: no rescaling), "
                             f"got {eps_reference_size}")
        if steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {steps}")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"{self.name}: step_size must be > 0 or null (2.5·eps/steps), got {step_size}")
        self._set_augmix(severity, width, depth, mix_alpha, ops)
        self.jsd_weight, self.norm, self.eps = float(jsd_weight), norm, float(eps)
        self.eps_by_modality = {str(k).upper(): float(v) for k, v in table.items()}
        self.eps_reference_size, self.steps = int(eps_reference_size), int(steps)
        self.step_size = None if step_size is None else float(step_size)
        self.random_start, self.joint_batch, self.seed = bool(random_start), bool(joint_batch), seed
        self.modality = "default"
        self.active_eps: float | None = None

    def resolve_eps(self, modality: str, image_shape: tuple[int, ...] | torch.Size) -> float:
        """ε for a DICOM Modality (``eps_by_modality``, case-insensitive; else ``eps``), rescaled for
        L2 from ``eps_reference_size`` to the images' ``H × W`` when that is > 0.

        Args:
            modality: a DICOM Modality code such as ``"MG"``, ``"CR"`` or ``"DX"``.
            image_shape: the images' shape; only the last two entries (H, W) are read.

        Returns:
            The budget, in the units of ``eps``.

        Example:
            >>> RobustAugMix(eps_reference_size=224).resolve_eps("dx", (1, 1, 112, 112))
            1.0
        """
        eps = self.eps_by_modality.get(str(modality).upper(), self.eps)
        if self.norm == "l2" and self.eps_reference_size > 0:
            h, w = int(image_shape[-2]), int(image_shape[-1])
            eps *= math.sqrt(h * w) / self.eps_reference_size
        return eps

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, modality: str = "default") -> None:
        """Pick ε for the training data's DICOM Modality and image size (logged).

        Args:
            model: the classifier (not used here).
            x: the training images ``[N, C, H, W]``; their ``H × W`` sets the L2 rescaling.
            y: the training labels (not used here).
            modality: the data's DICOM Modality, looked up in ``eps_by_modality``.

        Raises:
            ValueError: ``x`` is not 4-D (the method is ``image_only``).
        """
        super().prepare(model, x, y, modality)
        self.modality = str(modality)
        self.active_eps = self.resolve_eps(modality, tuple(x.shape))
        source = "eps_by_modality" if self.modality.upper() in self.eps_by_modality else "fallback eps"
        rescale = (f", rescaled from {self.eps_reference_size}x{self.eps_reference_size} to "
                   f"{x.shape[-2]}x{x.shape[-1]}") if self.norm == "l2" and self.eps_reference_size > 0 else ""
        log.info("%s: modality %s -> %s eps = %.6g (%s%s)", self.name, self.modality, self.norm, self.active_eps,
                 source, rescale)

    def current_eps(self, x: torch.Tensor) -> float:
        """The ε chosen by :meth:`prepare`; without it, resolved once for ``x``'s size and kept.

        Args:
            x: the current batch ``[B, C, H, W]`` (read only when :meth:`prepare` was not called).

        Returns:
            The budget, in the units of ``eps``.
        """
        if self.active_eps is None:  # prepare() not called: the fallback for this batch's size
            self.active_eps = self.resolve_eps(self.modality, tuple(x.shape))
        return self.active_eps

    def make_views(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(AugMix view of ``x``, PGD adversarial example of the clean ``x``); advances the generator.

        Args:
            model: the classifier to attack (PGD runs it in eval mode, input gradients only).
            x: float images ``[N, C, H, W]`` in [0, 1].
            y: class indices ``[N]``.

        Returns:
            ``(x_aug, x_adv)``, both detached, the shape of ``x``, in [0, 1]; ``x_adv`` within
            :meth:`current_eps` of ``x``.
        """
        x_aug = self.augment(x, self.generator(x.device))
        eps = self.current_eps(x)
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        cls = PGDL2 if self.norm == "l2" else PGD
        attack = cls(model, eps=eps, steps=self.steps, step_size=step_size, random_start=self.random_start,
                     seed=self.attack_seed())
        return x_aug, attack(x, y)

    def combine(self, clean: torch.Tensor, aug: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss from the three views' logits: :func:`robust_augmix_loss` (CE on the clean batch).

        Subclasses override this to change the objective (:class:`medrobust.defenses.rtda.RTDA`).

        Args:
            clean: logits ``[N, K]`` of the clean images.
            aug: logits ``[N, K]`` of the AugMix view.
            adv: logits ``[N, K]`` of the adversarial examples.
            y: class indices ``[N]``.

        Returns:
            A scalar.
        """
        return robust_augmix_loss(clean, aug, adv, y, self.jsd_weight)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`combine` of the clean, AugMix and PGD logits (RobustAugMix: CE on the clean batch)."""
        x_aug, x_adv = self.make_views(model, x, y)
        clean, aug, adv = forward_views(model, [x, x_aug, x_adv], self.joint_batch)
        loss = self.combine(clean, aug, adv, y)
        with torch.no_grad():
            consistency = jsd(clean, aug, adv).item()
        return loss, {"train_acc": _acc(clean, y), "train_adv_acc": _acc(adv, y), "train_jsd": consistency,
                      "train_eps": float(self.current_eps(x))}


__all__ = ["AugMix", "RTDA_EPS_BY_MODALITY", "RobustAugMix", "augmix_loss", "forward_views", "jsd",
           "robust_augmix_loss"]
