"""DPAAT — Li, Ma, Jiang & Meng, "Dynamic Perturbation-Adaptive Adversarial Training on Medical Image
Classification", arXiv 2403.06798 (2024).

Adversarial training in which every sample gets its own perturbation budget, chosen from how much
its loss rises under a perturbation (ΔL_i) compared with a continuously updated average ΔL_avg:
*fragile* samples (ΔL_i > ΔL_avg, close to the classifier boundary) get a smaller ε, *stable* ones
(ΔL_i < ΔL_avg) a larger ε; a synchronisation loss L_syn, a symmetric function of the
log-probabilities, aligns the clean logits y_ori = f(x) with the adversarial logits y_adv = f(x_adv).
Paper defaults (HAM10000): L2 PGD with ε = 0.3, 7 steps of 0.15; Adam, lr 3e-4, batch 32.

The paper's equations could not be consulted here (only its abstract and a summary were available),
so every detail below that the summary does not fix is a documented choice with a parameter:

1. **ΔL_i (``probe_steps``)** — measured on the current batch, before the training attack, by a
   *probe*: per-sample PGD at the base ε for ``probe_steps`` iterations (no random start, step
   ``min(ε, step_size · steps / probe_steps)``: the training attack's path length, never a step
   longer than the radius), then ``ΔL_i = CE(f(x_i + δ_i), y_i) − CE(f(x_i), y_i)`` in eval mode.
   Cost: ``probe_steps`` gradient passes plus two forward passes; the default ``probe_steps = 1``
   (an FGM step onto the ε-sphere) adds about 1/7 to the attack's cost. ``probe_steps = steps`` probes
   with the full training attack at the base ε (twice the attack cost). (Reusing a sample's ΔL from
   an earlier epoch would need sample indices, which the :class:`TrainingMethod` contract does not pass.)
2. **ΔL_avg (``avg``, ``avg_momentum``)** — "continuously updated" across mini-batches:
   ``"ema"`` (default): ``A ← m·A + (1 − m)·mean_batch(ΔL)`` with m = ``avg_momentum`` = 0.9,
   initialised with the first batch's mean; ``"cumulative"``: the mean of every ΔL seen so far;
   ``"batch"``: this batch's mean only. The average is updated with the current batch *before* the
   comparison. It lives on the defence object (it is not checkpointed; a resumed run starts afresh).
3. **ε_i (``schedule``, ``gamma``)** — ``"two_level"`` (default): ``ε_i = ε · (1 − γ·sign(ΔL_i −
   ΔL_avg))``, i.e. ε(1 − γ) for fragile, ε(1 + γ) for stable and ε for a tie; ``"ratio"``:
   ``ε_i = ε · clip(ΔL_avg / ΔL_i, 1 − γ, 1 + γ)`` when both are positive, else the two-level value
   (both agree on which side of ε a sample falls, and meet at ΔL_i → 0⁺ and ΔL_avg → 0⁺). γ = 0.5.
4. **Training attack** — per-sample PGD (:func:`per_sample_pgd`) with ε_i, ``steps`` iterations,
   step ``step_size · ε_i / ε`` (``scale_step=True``: each sample takes the same relative step; False:
   ``step_size`` for all), random start by default, in eval mode with input gradients only. L2 uses
   :class:`medrobust.attacks.PGDL2`'s conventions (torchattacks), L∞ those of :class:`medrobust.attacks.PGD`;
   with equal ε_i both are reproduced exactly (same start, same iterates).
5. **Loss (``syn``, ``syn_weight``, ``cls_on``)** — ``L = L_cls + λ · L_syn(y_ori, y_adv)`` with
   ``L_cls = CE(f(x_adv), y)`` (``cls_on="adv"``, default: adversarial training), ``CE(f(x), y)``
   (``"clean"``) or their mean (``"both"``); λ = ``syn_weight`` = 1.0. ``syn="sym_kl"`` (default):
   ``½[KL(p_ori ‖ p_adv) + KL(p_adv ‖ p_ori)]`` (Jeffreys divergence of the softmaxes, batch mean);
   ``"sym_ce"``: ``−½ Σ_k [p_ori,k log p_adv,k + p_adv,k log p_ori,k]`` (symmetric cross-entropy).
   Gradients flow through both logits ("mutual supervision"). Clean and adversarial images go through
   the model as one concatenated batch (batch norm sees both); the clean forward is skipped when
   neither term needs it.

``seed`` (optional) seeds a local generator for the random starts that advances from batch to batch;
``None`` uses the global RNG.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks.base import eval_mode
from medrobust.attacks.pgdl2 import EPS_FOR_DIVISION, l2_norms
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod

NORMS = ("l2", "linf")
SCHEDULES = ("two_level", "ratio")
AVERAGES = ("ema", "cumulative", "batch")
SYN_LOSSES = ("sym_kl", "sym_ce")
CLS_ON = ("adv", "clean", "both")


# --------------------------------------------------------------------------------------------------
# the pieces, each testable on hand-computed tensors
# --------------------------------------------------------------------------------------------------
def assign_eps(dl: torch.Tensor, dl_avg: float, eps: float, gamma: float, schedule: str = "two_level") -> torch.Tensor:
    """Per-sample budgets from the loss changes ``dl`` [N] and their average (module docstring, item 3).

    Args:
        dl: ΔL_i, the per-sample loss changes ``[N]`` (detached here).
        dl_avg: ΔL_avg, the running average to compare with.
        eps: the base ε (an L2 radius or L∞ fraction of the [0, 1] range).
        gamma: γ in [0, 1], the relative change of ε for fragile / stable samples.
        schedule: ``"two_level"`` (``ε·(1 − γ·sign(ΔL_i − ΔL_avg))``) or ``"ratio"``
            (``ε·clip(ΔL_avg/ΔL_i, 1 − γ, 1 + γ)`` where both are positive, else the two-level value).

    Returns:
        ε_i ``[N]``, with the dtype and device of ``dl``, in ``[ε(1 − γ), ε(1 + γ)]``.

    Raises:
        ValueError: an unknown ``schedule``.

    Example:
        >>> assign_eps(torch.tensor([0.5, 1.0, 2.0]), 1.0, 0.3, 0.5)
        tensor([0.4500, 0.3000, 0.1500])
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    dl = dl.detach()
    avg = torch.as_tensor(dl_avg, dtype=dl.dtype, device=dl.device)
    two_level = eps * (1.0 - gamma * torch.sign(dl - avg))
    if schedule == "two_level":
        return two_level
    both_positive = (dl > 0) & (avg > 0)
    ratio = (avg / torch.where(both_positive, dl, torch.ones_like(dl))).clamp(1.0 - gamma, 1.0 + gamma)
    return torch.where(both_positive, eps * ratio, two_level)


class LossChangeAverage:
    """ΔL_avg, updated batch by batch (``"ema"``, ``"cumulative"`` or ``"batch"``; module docstring, item 2).

    ``value`` is None until the first :meth:`update`, which sets it to that batch's mean in every mode;
    ``count`` is the number of ΔL values folded in.

    Args:
        mode: ``"ema"`` (``A ← m·A + (1 − m)·batch mean``), ``"cumulative"`` (mean of every value
            seen) or ``"batch"`` (the last batch's mean).
        momentum: m in [0, 1), used by ``"ema"`` only.

    Raises:
        ValueError: an unknown ``mode`` or ``momentum`` outside [0, 1).

    Example:
        >>> avg = LossChangeAverage("ema", 0.5)
        >>> avg.update(torch.tensor([1.0, 3.0])), avg.update(torch.tensor([0.0]))
        (2.0, 1.0)
    """

    def __init__(self, mode: str = "ema", momentum: float = 0.9) -> None:
        if mode not in AVERAGES:
            raise ValueError(f"avg must be one of {AVERAGES}, got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"avg_momentum must be in [0, 1), got {momentum}")
        self.mode, self.momentum = mode, float(momentum)
        self.value: float | None = None
        self.count = 0

    def update(self, dl: torch.Tensor) -> float:
        """Fold in one batch of ΔL values and return the updated average.

        Args:
            dl: the batch's ΔL values (any shape; computed in float64, detached).

        Returns:
            The updated ΔL_avg (also kept in ``value``).
        """
        n = dl.numel()
        batch_mean = float(dl.detach().double().mean())
        if self.value is None or self.mode == "batch":
            self.value = batch_mean
        elif self.mode == "ema":
            self.value = self.momentum * self.value + (1.0 - self.momentum) * batch_mean
        else:  # cumulative: the mean of every value seen so far
            self.value = (self.value * self.count + batch_mean * n) / (self.count + n)
        self.count += n
        return self.value


def sync_loss(logits_ori: torch.Tensor, logits_adv: torch.Tensor, kind: str = "sym_kl") -> torch.Tensor:
    """L_syn between clean and adversarial logits, summed over classes and averaged over the batch.

    ``"sym_kl"``: ``½[KL(p_ori ‖ p_adv) + KL(p_adv ‖ p_ori)]``; ``"sym_ce"``:
    ``−½ Σ_k [p_ori,k log p_adv,k + p_adv,k log p_ori,k]``. Both are symmetric in their arguments.

    Args:
        logits_ori: clean logits y_ori ``[N, K]``.
        logits_adv: adversarial logits y_adv ``[N, K]``.
        kind: ``"sym_kl"`` or ``"sym_ce"``.

    Returns:
        A scalar; gradients flow through both logits.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in SYN_LOSSES:
        raise ValueError(f"syn must be one of {SYN_LOSSES}, got {kind!r}")
    log_p, log_q = F.log_softmax(logits_ori, dim=1), F.log_softmax(logits_adv, dim=1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "sym_kl":
        per_sample = 0.5 * ((p - q) * (log_p - log_q)).sum(1)  # = ½[KL(p‖q) + KL(q‖p)]
    else:
        per_sample = -0.5 * (p * log_q + q * log_p).sum(1)
    return per_sample.mean()


def _per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or an [N] tensor, as an [N, 1, …] tensor broadcasting against ``like``."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(len(like))
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def per_sample_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor | float,
    steps: int,
    step_size: torch.Tensor | float,
    norm: str = "l2",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the mean cross-entropy where sample i has its own radius ``eps[i]`` (and step).

    L2 follows :class:`medrobust.attacks.PGDL2` (Gaussian direction with radius U(0,1)·ε_i to start;
    step along ∇/(‖∇‖₂ + 1e-10); scale δ by min(1, ε_i/‖δ‖₂); clip to [0, 1]); L∞ follows
    :class:`medrobust.attacks.PGD` (uniform start in the ε_i-box; sign step; clip δ to [−ε_i, ε_i];
    clip to [0, 1]). Random numbers are drawn in the same order as those classes, so with equal ε_i
    and a generator seeded like theirs the iterates are identical. Runs the model in eval mode (the
    caller's mode restored) and differentiates w.r.t. the input only.

    Args:
        model: the classifier (logits from images in [0, 1]).
        x: images ``[N, C, H, W]`` in [0, 1].
        y: class indices ``[N]``.
        eps: [N] radii (or one float); a sample with ε_i = 0 stays at x_i. L2 radii, or fractions of
            the [0, 1] pixel range for L∞.
        steps: number of iterations (0: the random start, or ``x`` without one).
        step_size: [N] steps (or one float), in the units of ``eps``.
        norm: ``"l2"`` or ``"linf"``.
        random_start: start at a random point of each sample's ball (else at ``x``).
        generator: source of the random start; None uses the global RNG.

    Returns:
        The last iterate, detached, in [0, 1] and within each sample's ball.

    Raises:
        ValueError: an unknown ``norm``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x, y = x.detach(), y.detach()
    eps_b, step_b = _per_sample(eps, x), _per_sample(step_size, x)
    with eval_mode(model):
        adv = x.clone()
        if random_start:
            dev = generator.device if generator is not None else x.device
            if norm == "l2":
                delta = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
                radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=dev,
                                    dtype=x.dtype).to(x.device)
                delta = delta * radius / l2_norms(delta) * eps_b
            else:
                noise = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
                delta = (2 * noise - 1) * eps_b
            adv = torch.clamp(x + delta, 0.0, 1.0)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                if norm == "l2":
                    adv = adv + step_b * (grad / (l2_norms(grad) + EPS_FOR_DIVISION))
                    delta = adv - x
                    dnorm = l2_norms(delta)
                    factor = torch.where(dnorm > 0, eps_b / dnorm, torch.ones_like(dnorm)).clamp(max=1.0)
                    delta = delta * factor
                else:
                    adv = adv + step_b * grad.sign()
                    delta = torch.maximum(torch.minimum(adv - x, eps_b), -eps_b)
                adv = torch.clamp(x + delta, 0.0, 1.0)
    return adv.detach()


def loss_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_pert: torch.Tensor) -> torch.Tensor:
    """``ΔL_i = CE(f(x_pert_i), y_i) − CE(f(x_i), y_i)`` per sample, in eval mode, without gradients.

    Args:
        model: the classifier (its mode is restored afterwards).
        x: clean images ``[N, C, H, W]``.
        y: class indices ``[N]``.
        x_pert: the perturbed images, same shape as ``x``.

    Returns:
        ΔL ``[N]`` (no graph).
    """
    with eval_mode(model), torch.no_grad():
        ce_pert = F.cross_entropy(model(x_pert), y, reduction="none")
        ce_clean = F.cross_entropy(model(x), y, reduction="none")
    return ce_pert - ce_clean


# --------------------------------------------------------------------------------------------------
# the training method
# --------------------------------------------------------------------------------------------------
@TRAINING_METHODS.register()
class DPAAT(TrainingMethod):
    """Dynamic perturbation-adaptive adversarial training (see the module docstring).

    Args:
        norm: ``"l2"`` (paper) or ``"linf"``.
        eps: the base ε: an L2 radius of [0, 1] images, or a fraction of the [0, 1] range for L∞.
        steps: iterations of the training attack (≥ 1).
        step_size: step of the training attack at the base ε, in the units of ``eps``.
        random_start: random start of the training attack (the probe never uses one).
        scale_step: scale each sample's step by ``ε_i / ε`` (else ``step_size`` for all).
        probe_steps: iterations of the ΔL probe at the base ε (≥ 1; item 1).
        avg: ``"ema"``, ``"cumulative"`` or ``"batch"``, how ΔL_avg is updated (item 2).
        avg_momentum: m in [0, 1) of the ``"ema"`` average.
        schedule: ``"two_level"`` or ``"ratio"``, ΔL_i → ε_i (item 3, :func:`assign_eps`).
        gamma: γ in [0, 1], the relative change of ε.
        syn: ``"sym_kl"`` or ``"sym_ce"``, the synchronisation loss (:func:`sync_loss`).
        syn_weight: λ ≥ 0, its weight (0 drops it).
        cls_on: ``"adv"``, ``"clean"`` or ``"both"``, which logits the cross-entropy sees (item 5).
        seed: seeds a local generator for the training attack's random starts (advancing from batch
            to batch); None uses the global RNG.

    Raises:
        ValueError: an unknown choice or a value out of range.

    Stats: ``train_eps_mean``, ``train_fragile`` (share with ε_i < ε), ``train_dl_avg``,
    ``train_adv_acc``, ``train_acc`` (when the clean forward runs), ``train_syn`` (when λ > 0).
    """

    name = "dpaat"

    def __init__(
        self,
        norm: str = "l2",
        eps: Eps = 0.3,
        steps: int = 7,
        step_size: Eps = 0.15,
        random_start: bool = True,
        scale_step: bool = True,
        probe_steps: int = 1,
        avg: str = "ema",
        avg_momentum: float = 0.9,
        schedule: str = "two_level",
        gamma: float = 0.5,
        syn: str = "sym_kl",
        syn_weight: float = 1.0,
        cls_on: str = "adv",
        seed: int | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         scale_step=scale_step, probe_steps=probe_steps, avg=avg, avg_momentum=avg_momentum,
                         schedule=schedule, gamma=gamma, syn=syn, syn_weight=syn_weight, cls_on=cls_on, seed=seed)
        for key, value, allowed in (("norm", norm, NORMS), ("schedule", schedule, SCHEDULES),
                                    ("avg", avg, AVERAGES), ("syn", syn, SYN_LOSSES), ("cls_on", cls_on, CLS_ON)):
            if value not in allowed:
                raise ValueError(f"dpaat: {key} must be one of {', '.join(allowed)}, got {value!r}")
        if eps < 0 or step_size < 0 or syn_weight < 0:
            raise ValueError("dpaat: eps, step_size and syn_weight must be >= 0")
        if steps < 1 or probe_steps < 1:
            raise ValueError("dpaat: steps and probe_steps must be >= 1")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"dpaat: gamma must be in [0, 1], got {gamma}")
        if not 0.0 <= avg_momentum < 1.0:
            raise ValueError(f"dpaat: avg_momentum must be in [0, 1), got {avg_momentum}")
        self.norm, self.eps, self.steps, self.step_size = norm, float(eps), int(steps), float(step_size)
        self.random_start, self.scale_step, self.probe_steps = random_start, scale_step, int(probe_steps)
        self.schedule, self.gamma = schedule, float(gamma)
        self.syn, self.syn_weight, self.cls_on = syn, float(syn_weight), cls_on
        self.seed = seed
        self.dl_avg = LossChangeAverage(avg, avg_momentum)

    def probe_step_size(self) -> float:
        """The probe's step: the training attack's path length over ``probe_steps``, at most ε.

        Returns:
            ``min(ε, step_size · steps / probe_steps)``, in the units of ``eps``.
        """
        return min(self.eps, self.step_size * self.steps / self.probe_steps)

    def state_dict(self) -> dict[str, Any]:
        """The generators' states and ΔL_avg (its value and count), so a resumed run goes on with the same average."""
        return {**super().state_dict(), "dl_avg": {"value": self.dl_avg.value, "count": self.dl_avg.count}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back :meth:`state_dict`'s generators and ΔL_avg (absent: the average starts empty)."""
        super().load_state_dict(state)
        saved = state.get("dl_avg", {})
        self.dl_avg.value = None if saved.get("value") is None else float(saved["value"])
        self.dl_avg.count = int(saved.get("count", 0))

    def sample_eps(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probe the batch, update ΔL_avg and return (ε_i [N], ΔL_i [N]).

        Args:
            model: the classifier (probed in eval mode).
            x: images ``[N, C, H, W]`` in [0, 1].
            y: class indices ``[N]``.

        Returns:
            ``(eps_i, dl)``: the per-sample budgets (:func:`assign_eps`) and the probe's loss changes
            (:func:`loss_change`), both ``[N]``.
        """
        x_probe = per_sample_pgd(model, x, y, self.eps, self.probe_steps, self.probe_step_size(), self.norm,
                                 random_start=False)
        dl = loss_change(model, x, y, x_probe)
        avg = self.dl_avg.update(dl)
        return assign_eps(dl, avg, self.eps, self.gamma, self.schedule), dl

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_cls + λ·L_syn(f(x), f(x_adv))`` with ``x_adv`` from per-sample PGD at ε_i (items 1–5)."""
        eps_i, dl = self.sample_eps(model, x, y)
        steps_i = self.step_size * eps_i / self.eps if (self.scale_step and self.eps > 0) else self.step_size
        x_adv = per_sample_pgd(model, x, y, eps_i, self.steps, steps_i, self.norm, self.random_start,
                               self.generator(x.device))
        need_clean = self.syn_weight > 0 or self.cls_on != "adv"
        stats: dict[str, float] = {
            "train_eps_mean": eps_i.mean().item(),
            "train_fragile": (eps_i < self.eps).float().mean().item(),
            "train_dl_avg": float(self.dl_avg.value),
        }
        if need_clean:
            logits_ori, logits_adv = model(torch.cat([x, x_adv])).split(len(x))
            stats["train_acc"] = (logits_ori.argmax(1) == y).float().mean().item()
        else:
            logits_ori, logits_adv = None, model(x_adv)
        if self.cls_on == "adv":
            loss = F.cross_entropy(logits_adv, y)
        elif self.cls_on == "clean":
            loss = F.cross_entropy(logits_ori, y)
        else:
            loss = 0.5 * (F.cross_entropy(logits_ori, y) + F.cross_entropy(logits_adv, y))
        if self.syn_weight > 0:
            syn = sync_loss(logits_ori, logits_adv, self.syn)
            loss = loss + self.syn_weight * syn
            stats["train_syn"] = syn.item()
        stats["train_adv_acc"] = (logits_adv.argmax(1) == y).float().mean().item()
        return loss, stats
