"""Dual (domain-specific) batch normalisation for adversarial training — the "batch
normalization-based method" the ARFL paper ("Adversarially Robust Feature
Learning for Breast Cancer Diagnosis", arXiv 2402.08768, Sections 1 and 4.2) compares with:
DSBN, Chang et al., "Domain-Specific Batch Normalization for Unsupervised Domain Adaptation",
CVPR 2019, applied to clean vs adversarial data as in Han et al., Nature Communications 2021 and
AdvProp (Xie et al., "Adversarial Examples Improve Image Recognition", CVPR 2020).

Every batch-norm layer holds two copies (:class:`medrobust.models.DualBatchNorm`): the clean
branch normalises clean data, the adversarial branch adversarial data, with separate running
statistics and affine parameters; every other weight is shared. Per batch (AdvProp's objective,
:func:`dsbn_loss`)::

    L = CE(f_clean-BN(x), y) + w · CE(f_adv-BN(x'), y),    x' = PGD_{adv-BN}(x)

* ``x'`` maximises the cross-entropy of the model *routed through the adversarial BN* (as AdvProp
  generates its auxiliary examples), in eval mode with input gradients only, so the attack reads
  but never updates the running statistics.
* The two forward passes are separate, so each BN branch's batch statistics come from its own
  data only (the point of the method; one concatenated batch would mix them).
* Routing is explicit (:func:`medrobust.models.bn_route`), never by batch position; after the loss
  the model routes to the clean BN again, so evaluation, attacks and deployment use the clean
  branch (the ARFL paper notes that choosing the BN at test time is this method's weak point; we
  deploy the clean one, as AdvProp does).

The model must be built with ``ModelSpec(dual_bn=True)``: ``model_overrides`` asks the train stage
for it. A model without batch norm (e.g. the ``mlp`` backbone) has nothing to split (the paper also
leaves DSBN out of its two-moon MLP experiment) and is refused with a clear error.

**After a clean warm-up** (``train.clean_warmup_epochs``) only the clean branch has been trained;
the adversarial one would still hold the initial statistics (mean 0, variance 1) and affine
parameters (1, 0), so the first PGD through it would attack a network that is not the one being
trained. :meth:`DSBN.end_warmup` copies the clean branch into the adversarial one, attacks up to
``bn_calibration_images`` training images (evenly spaced over the set) through it, and re-estimates the adversarial running
statistics on those adversarial images (a cumulative average over batches of 128) before the first
adversarial batch.

Defaults: w = 1 (AdvProp), PGD L∞ with the ARFL paper's mammography budget ε = 0.01 (the paper
replaces Han et al.'s FGSM by its own PGD for this baseline), 7 steps of 2.5·ε/7
(``step_size=None``), random start.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import PGD, PGDL2
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod
from medrobust.models.dual_bn import bn_route, dual_bn_layers, has_dual_bn

log = logging.getLogger(__name__)


def dsbn_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, adv_weight: float) -> torch.Tensor:
    """``CE(logits_clean, y) + adv_weight · CE(logits_adv, y)`` (each CE averaged over the batch).

    Args:
        logits_clean: logits ``[N, K]`` of the clean images through the clean BN.
        logits_adv: logits ``[N, K]`` of the adversarial images through the adversarial BN.
        y: class indices ``[N]``.
        adv_weight: w, the weight of the adversarial term.

    Returns:
        A scalar.
    """
    return F.cross_entropy(logits_clean, y) + adv_weight * F.cross_entropy(logits_adv, y)


@TRAINING_METHODS.register()
class DSBN(TrainingMethod):
    """Clean data through the clean BN, PGD data through the adversarial BN; see the module docstring.

    Args:
        adv_weight: w ≥ 0, the weight of the adversarial cross-entropy.
        norm: ``"linf"`` (:class:`medrobust.attacks.PGD`) or ``"l2"`` (:class:`medrobust.attacks.PGDL2`).
        eps: ε ≥ 0, a fraction of the [0, 1] pixel range (L∞) or an L2 radius in the same units.
        steps: PGD iterations (≥ 1).
        step_size: PGD step in the units of ``eps`` (> 0); None: ``2.5·ε/steps``.
        random_start: start PGD at a random point of the ε-ball (else at ``x``).
        bn_calibration_images: training images (≥ 0, evenly spaced over the set) whose PGD examples
            re-estimate the adversarial BN's statistics when a clean warm-up ends (:meth:`end_warmup`).
        seed: makes the random starts reproducible (one attack seed per batch from a local
            generator); None uses the global RNG.

    Raises:
        ValueError: an unknown ``norm`` or a value out of range.

    Stats: ``train_acc`` (clean BN), ``train_adv_acc`` (adversarial BN).
    """

    name = "dsbn"
    model_overrides = {"dual_bn": True}

    def __init__(
        self,
        adv_weight: float = 1.0,
        norm: str = "linf",
        eps: Eps = 0.01,
        steps: int = 7,
        step_size: Eps | None = None,
        random_start: bool = True,
        bn_calibration_images: int = 512,
        seed: int | None = None,
    ) -> None:
        super().__init__(adv_weight=adv_weight, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, bn_calibration_images=bn_calibration_images, seed=seed)
        if bn_calibration_images < 0:
            raise ValueError(f"dsbn: bn_calibration_images must be >= 0, got {bn_calibration_images}")
        self.bn_calibration_images = int(bn_calibration_images)
        if adv_weight < 0:
            raise ValueError(f"dsbn: adv_weight must be >= 0, got {adv_weight}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"dsbn: norm must be 'linf' or 'l2', got {norm!r}")
        if eps < 0 or steps < 1 or (step_size is not None and step_size <= 0):
            raise ValueError("dsbn: eps must be >= 0, steps >= 1 and step_size > 0 (or null)")
        self.adv_weight, self.norm, self.eps, self.steps = float(adv_weight), norm, float(eps), int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start, self.seed = random_start, seed

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD on the model routed through the adversarial BN (eval mode: statistics untouched).

        Args:
            model: a classifier with dual batch norm (``ModelSpec(dual_bn=True)``).
            x: images ``[N, C, H, W]`` in [0, 1].
            y: class indices ``[N]``.

        Returns:
            The adversarial images, in [0, 1] and within ε of ``x``; the model routes to the clean
            BN again afterwards.

        Raises:
            ValueError: the model has no dual batch-norm layers (from :func:`medrobust.models.bn_route`).
        """
        cls = PGD if self.norm == "linf" else PGDL2
        attack = cls(model, eps=self.eps, steps=self.steps, step_size=self.step_size,
                     random_start=self.random_start, seed=self.attack_seed())
        with bn_route(model, "adv"):
            return attack(x, y)

    def end_warmup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Give the adversarial BN the warmed-up clean BN's parameters and statistics of adversarial images.

        Every adversarial branch becomes a copy of its clean branch (running statistics and affine
        parameters); then PGD through it (:meth:`perturb`) attacks ``bn_calibration_images`` training
        images evenly spaced over the set, and its running statistics are re-estimated on them from scratch (a
        cumulative average, batches of 128, no gradient). With ``bn_calibration_images = 0`` only the
        copy is made. The model's mode and each layer's momentum are restored.

        Raises:
            ValueError: the model has no dual batch-norm layers.
        """
        layers = dual_bn_layers(model)
        if not layers:
            raise ValueError("dsbn: the model has no dual batch-norm layers; build it with ModelSpec(dual_bn=True)")
        for m in layers:
            m.adv.load_state_dict(m.clean.state_dict())
        n = min(self.bn_calibration_images, len(x))
        if n == 0:
            log.info("dsbn: adversarial BN copied from the clean BN after the clean warm-up")
            return
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        idx = torch.arange(n) * len(x) // n
        adv = [self.perturb(model, x[chunk].to(device), y[chunk].to(device)) for chunk in idx.split(128)]
        momenta = [m.adv.momentum for m in layers]
        try:
            for m in layers:
                m.adv.reset_running_stats()
                m.adv.momentum = None  # cumulative average over the calibration batches
                m.adv.train()
            with torch.no_grad(), bn_route(model, "adv"):
                for batch in adv:
                    model(batch)
        finally:
            for m, momentum in zip(layers, momenta):
                m.adv.momentum = momentum
            model.train(was_training)
        log.info("dsbn: adversarial BN copied from the clean BN and its statistics re-estimated on %d PGD images "
                 "after the clean warm-up", n)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """AdvProp's objective (:func:`dsbn_loss`): clean CE via the clean BN + w · PGD CE via the adversarial BN.

        Raises:
            ValueError: the model has no dual batch-norm layers.
        """
        if not has_dual_bn(model):
            raise ValueError("dsbn: the model has no dual batch-norm layers; build it with ModelSpec(dual_bn=True) "
                             "(the train stage does so from DSBN.model_overrides) and a backbone with batch norm")
        x_adv = self.perturb(model, x, y)
        with bn_route(model, "adv"):
            logits_adv = model(x_adv)
        with bn_route(model, "clean"):
            logits_clean = model(x)
        loss = dsbn_loss(logits_clean, logits_adv, y, self.adv_weight)
        return loss, {
            "train_acc": (logits_clean.argmax(1) == y).float().mean().item(),
            "train_adv_acc": (logits_adv.argmax(1) == y).float().mean().item(),
        }
