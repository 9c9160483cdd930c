"""RAN (rectify adversarial noise) — Han, Jin, Ma & Liu, "Light-weight Fine-tuning Method for Defending
Adversarial Noise in Pre-trained Medical Vision-Language Models", arXiv 2407.02716 (Findings of EMNLP
2024). RAN builds on NMTune (Chen et al., "Understanding and Mitigating the Label Noise in Pre-training
on Downstream Tasks", ICLR 2024, arXiv 2309.17002).

The pre-trained encoder stays frozen (``trainable = "head"``: only the RAN head, and a learned adapter
if any, train). With ``F = model.embed(x)`` (``[M, D]``) the head computes ``Z = g(F)`` (an MLP,
``D → hidden → D``), logits ``W Z + b``, and keeps learned class centroids ``c_1 … c_K`` in ``Z``
space (:class:`medrobust.models.ran_head.RANHead`, ``model_overrides = {"head": "ran"}``). The batch loss is

    L = CE(W Z + b, y) + λ_cov · L_cov(Z) + λ_con · L_con(Z, F) + λ_adv · L_adv(Z, y, c)

* **Covariance regularisation** (NMTune's ``L_COV``, from VICReg) — decorrelate the dimensions of Z
  (:func:`covariance_loss`)::

      C(Z) = 1/(M − 1) · Σ_m (z_m − z̄)(z_m − z̄)ᵀ,      L_cov = (1/D) · Σ_{i ≠ j} C(Z)_ij²

* **Consistency** (NMTune's ``L_MSE``) — keep Z close to the pre-trained features. ``g`` keeps the width
  ``D`` so Z and F are compared entry by entry; as in NMTune both are L2-normalised per sample first
  (``normalize_consistency``), which makes the term independent of the encoder's feature scale
  (:func:`consistency_loss`)::

      L_con = (1/M) · Σ_m ‖ f_m/‖f_m‖ − z_m/‖z_m‖ ‖²      (∈ [0, 4])

* **Adversarial (margin) loss** — the paper maximises "1) the distance between the features of a given
  class and the learned centroids of other classes, and 2) the separation between the learned
  centroids of different classes". Maximising a distance is unbounded, so both parts are hinges with a
  margin μ and are zero once the margin is met (:func:`centroid_margin_loss`). Distances are taken
  between L2-normalised vectors, ``d(a, b) = ‖a/‖a‖ − b/‖b‖‖ ∈ [0, 2]``, so μ does not depend on the
  feature scale::

      L_adv = 1/(M(K−1)) · Σ_m Σ_{k ≠ y_m} [μ − (d(z_m, c_k) − d(z_m, c_{y_m}))]_+
            + 2/(K(K−1)) · Σ_{j < k} [μ − d(c_j, c_k)]_+

  Choice: the sample part measures the distance to another class's centroid *relative to* the
  sample's own centroid (a prototype-margin hinge). With learnable centroids a pure push
  ``[μ − d(z_m, c_k)]_+`` lets a centroid meet the margin by leaving its own class; the relative
  form keeps each centroid tied to its class. Centroids are parameters of the head (trained by this
  term, saved with the model) and are initialised in :meth:`RAN.prepare` from the class means of
  ``Z`` on the training set (``init_centroids``). With a clean warm-up (``train.clean_warmup_epochs``)
  the warm-up minimises the terms without centroids (CE, L_cov, L_con) and the centroids are set
  again from the warmed-up head before the margin term starts (:meth:`RAN.end_warmup`).

NMTune's third term (the dominant-singular-value regulariser) is not part of RAN's description and is
not used. The method section's equation numbers and loss weights could not be read from the sources
available to us; the terms follow the paper's description and NMTune's definitions, and the weights
are parameters. Defaults: λ_cov = λ_con = λ_adv = 0.1 (our choice: each weighted regulariser stays below the
cross-entropy at initialisation, checked on small_cnn), μ = 0.5 (about 29° between unit vectors).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.base import eval_mode
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod
from medrobust.models.ran_head import RANHead

log = logging.getLogger(__name__)


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """``(1/D) Σ_{i≠j} C(Z)_ij²`` with the unbiased covariance ``C(Z)`` of the rows of ``z`` ([M, D]).

    Zero for fewer than two rows (no covariance estimate).

    Args:
        z: transformed features ``[M, D]``.

    Returns:
        A scalar ≥ 0 (connected to the graph of ``z`` also when it is zero).
    """
    m, d = z.shape
    if m < 2:
        return z.sum() * 0.0
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (m - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


def consistency_loss(z: torch.Tensor, f: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``(1/M) Σ_m ‖f_m − z_m‖²``, each row L2-normalised first when ``normalize`` (NMTune's L_MSE).

    Args:
        z: transformed features ``[M, D]``.
        f: the encoder's features ``[M, D]`` (the caller detaches them: they are the target).
        normalize: L2-normalise each row of ``z`` and ``f`` first (the value then lies in [0, 4]).

    Returns:
        A scalar ≥ 0.

    Raises:
        ValueError: ``z`` and ``f`` differ in shape.
    """
    if z.shape != f.shape:
        raise ValueError(f"consistency: Z {tuple(z.shape)} and F {tuple(f.shape)} must have the same shape")
    if normalize:
        z, f = F.normalize(z, dim=1), F.normalize(f, dim=1)
    return (f - z).pow(2).sum(dim=1).mean()


def _sphere_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ``‖a_i/‖a_i‖ − b_j/‖b_j‖‖`` ([len(a), len(b)]), safe to differentiate at zero distance."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    squared = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    return torch.sqrt(squared.clamp_min(1e-12))


def centroid_margin_loss(z: torch.Tensor, y: torch.Tensor, centroids: torch.Tensor,
                         margin: float) -> torch.Tensor:
    """RAN's adversarial loss as bounded hinges (see the module docstring):
    ``mean_{m, k≠y_m} [μ − (d(z_m, c_k) − d(z_m, c_{y_m}))]_+ + mean_{j<k} [μ − d(c_j, c_k)]_+``.

    Args:
        z: transformed features ``[M, D]``.
        y: labels ``[M]`` in ``0 … K−1``.
        centroids: ``[K, D]``.
        margin: μ (distances between unit vectors lie in [0, 2]).

    Returns:
        A scalar ≥ 0; 0 for a single class.
    """
    k = centroids.shape[0]
    if k < 2:
        return z.sum() * 0.0
    dist = _sphere_distance(z, centroids)                       # [M, K]
    own = dist.gather(1, y[:, None])                            # [M, 1]
    others = ~F.one_hot(y, k).bool()                            # [M, K]
    sample_term = F.relu(margin - (dist - own))[others].mean()
    pairs = torch.triu_indices(k, k, offset=1, device=centroids.device)
    cdist = _sphere_distance(centroids, centroids)[pairs[0], pairs[1]]
    centroid_term = F.relu(margin - cdist).mean()
    return sample_term + centroid_term


def _ran_head(model: nn.Module) -> RANHead:
    head = getattr(model, "head", None)
    if not isinstance(head, RANHead) or not hasattr(model, "embed"):
        raise TypeError("ran: the model must be a medrobust Classifier with the 'ran' head "
                        "(ModelSpec(head='ran'); the train stage sets it from RAN.model_overrides)")
    return head


@TRAINING_METHODS.register()
class RAN(TrainingMethod):
    """RAN fine-tuning of a head on a frozen encoder (see the module docstring).

    Needs a medrobust ``Classifier`` with the ``ran`` head (``model_overrides``); only the head (and
    a learned adapter, if any) trains. No attack: the batches are clean.

    Args:
        cov_weight: λ_cov ≥ 0, the weight of the covariance regulariser (:func:`covariance_loss`).
        consistency_weight: λ_con ≥ 0, the weight of the consistency term (:func:`consistency_loss`).
        adv_weight: λ_adv ≥ 0, the weight of the centroid margin loss (:func:`centroid_margin_loss`).
        margin: μ in [0, 2], the hinge margin between distances of unit vectors.
        normalize_consistency: L2-normalise Z and F per sample in the consistency term.
        init_centroids: set the centroids to the class means of Z in :meth:`prepare` (else they keep
            the head's random initialisation).

    Raises:
        ValueError: a negative weight or ``margin`` outside [0, 2].

    Stats: ``train_acc``, ``train_ce``, ``train_cov``, ``train_consistency``, ``train_margin``.
    """

    name = "ran"
    model_overrides = {"head": "ran"}
    trainable = "head"

    def __init__(
        self,
        cov_weight: float = 0.1,
        consistency_weight: float = 0.1,
        adv_weight: float = 0.1,
        margin: float = 0.5,
        normalize_consistency: bool = True,
        init_centroids: bool = True,
    ) -> None:
        super().__init__(cov_weight=cov_weight, consistency_weight=consistency_weight, adv_weight=adv_weight,
                         margin=margin, normalize_consistency=normalize_consistency, init_centroids=init_centroids)
        if cov_weight < 0 or consistency_weight < 0 or adv_weight < 0:
            raise ValueError("ran: cov_weight, consistency_weight and adv_weight must be >= 0")
        if not 0 <= margin <= 2:
            raise ValueError(f"ran: margin must be in [0, 2] (distances between unit vectors), got {margin}")
        self.cov_weight, self.consistency_weight, self.adv_weight = (float(cov_weight), float(consistency_weight),
                                                                     float(adv_weight))
        self.margin = float(margin)
        self.normalize_consistency = bool(normalize_consistency)
        self.init_centroids = bool(init_centroids)

    @torch.no_grad()
    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, modality: str = "default") -> None:
        """Initialise the centroids to the class means of ``Z = g(F)`` on the training set (:meth:`set_centroids`).

        With a clean warm-up they are set again when it ends (:meth:`end_warmup`), from the trained head.

        Args:
            model: a medrobust ``Classifier`` with the ``ran`` head.
            x: the training images ``[N, C, H, W]`` (or vectors ``[N, D]``).
            y: class indices ``[N]``.
            modality: the data's DICOM Modality (not used by RAN).

        Raises:
            TypeError: the model has no ``embed`` or its head is not a ``RANHead``.
        """
        super().prepare(model, x, y, modality)
        self.set_centroids(model, x, y)

    @torch.no_grad()
    def set_centroids(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the centroids to the class means of ``Z = g(F)`` over ``x`` (eval mode, no gradient).

        Z is computed in chunks of 256 images on the head's device; a class without images keeps its
        centroid (logged as a warning). Nothing is set when ``init_centroids`` is False.

        Args:
            model: a medrobust ``Classifier`` with the ``ran`` head.
            x: the training images ``[N, C, H, W]`` (or vectors ``[N, D]``), on any device.
            y: class indices ``[N]``.

        Raises:
            TypeError: the model has no ``embed`` or its head is not a ``RANHead``.
        """
        head = _ran_head(model)
        if not self.init_centroids:
            return
        device = head.centroids.device
        zs = []
        with eval_mode(model):
            for start in range(0, len(x), 256):
                zs.append(head.transform(model.embed(x[start:start + 256].to(device))))
        absent = head.init_centroids(torch.cat(zs), y.to(device))
        if absent:
            log.warning("ran: classes %s have no training images; their centroids stay as they were", absent)

    def end_warmup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The clean warm-up trained ``g``: the centroids are set again from its ``Z`` (:meth:`set_centroids`)."""
        self.set_centroids(model, x, y)
        if self.init_centroids:
            log.info("ran: centroids set to the class means of Z after the clean warm-up")

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              margin: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of RAN's terms; without ``margin``, the centroid margin term is left out.

        Raises:
            TypeError: the model has no ``embed`` or its head is not a ``RANHead``.
        """
        head = _ran_head(model)
        f = model.embed(x)
        z = head.transform(f)
        logits = head.classifier(z)
        ce = F.cross_entropy(logits, y)
        cov = covariance_loss(z)
        con = consistency_loss(z, f.detach(), normalize=self.normalize_consistency)
        loss = ce + self.cov_weight * cov + self.consistency_weight * con
        stats = {"train_acc": (logits.argmax(1) == y).float().mean().item(), "train_ce": ce.item(),
                 "train_cov": cov.item(), "train_consistency": con.item()}
        if margin:
            adv = centroid_margin_loss(z, y, head.centroids, self.margin)
            loss = loss + self.adv_weight * adv
            stats["train_margin"] = adv.item()
        return loss, stats

    def warmup_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """NMTune's part of RAN during the clean warm-up: ``CE + λ_cov·L_cov + λ_con·L_con``, no centroid term
        (the centroids are set from the warmed-up head when the warm-up ends)."""
        return self.terms(model, x, y, margin=False)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(W Z + b, y) + λ_cov·L_cov(Z) + λ_con·L_con(Z, F) + λ_adv·L_adv(Z, y, c)``, F detached in L_con.

        Raises:
            TypeError: the model has no ``embed`` or its head is not a ``RANHead``.
        """
        return self.terms(model, x, y, margin=True)
