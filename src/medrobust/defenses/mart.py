"""MART — Wang, Zou, Yi, Bailey, Ma & Gu, "Improving Adversarial Robustness Requires Revisiting
Misclassified Examples", ICLR 2020, Eq. (6)–(8):

    L = (1/n) Σ_i [ BCE(p(x'_i), y_i) + λ · KL( p(x_i) ‖ p(x'_i) ) · (1 − p_{y_i}(x_i)) ]

    BCE(p(x'), y) = −log p_y(x') − log(1 − max_{k≠y} p_k(x'))

with ``p = softmax(f_θ(·))`` and ``x'`` the PGD adversarial example maximising the cross-entropy
in the L∞ ε-ball (:class:`medrobust.attacks.PGD`: uniform random start, run in eval mode, input
gradients only). ``log(1 − max_{k≠y} p_k)`` is computed exactly and stably as
``logsumexp_{k≠j} z_k − logsumexp_k z_k`` with ``j = argmax_{k≠y} z_k`` (no ``+1e-12`` fudge).
Gradients flow through every term (including ``p(x)`` and the weight ``1 − p_y(x)``), as in the
paper's objective; the outer forward passes run in the caller's mode.

Defaults: ε = 8/255, 10 PGD steps of 2/255, λ (``beta``) = 6.0 (the paper's CIFAR-10 setting).
``seed`` (optional) makes the PGD random starts reproducible (a local generator draws one attack
seed per batch); ``None`` uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks import PGD
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART's batch loss (mean over samples) from clean and adversarial logits (Eq. 8).

    ``BCE(p(x'), y) + β · KL(p(x) ‖ p(x')) · (1 − p_y(x))`` per sample, with the boosted
    cross-entropy's ``log(1 − max_{k≠y} p_k(x'))`` computed exactly via ``logsumexp``.

    Args:
        logits_clean: logits ``[N, K]`` of the clean images.
        logits_adv: logits ``[N, K]`` of the adversarial images.
        y: class indices ``[N]``.
        beta: λ, the weight of the misclassification-aware KL term.

    Returns:
        A scalar; gradients flow through every term, including the weight ``1 − p_y(x)``.
    """
    log_p_adv = F.log_softmax(logits_adv, dim=1)
    # boosted CE: −log p_y(x') − log(1 − max_{k≠y} p_k(x'))
    true = F.one_hot(y, logits_adv.shape[1]).bool()
    runner_up = logits_adv.masked_fill(true, float("-inf")).argmax(1)
    others = logits_adv.masked_fill(F.one_hot(runner_up, logits_adv.shape[1]).bool(), float("-inf"))
    log_one_minus_max = torch.logsumexp(others, dim=1) - torch.logsumexp(logits_adv, dim=1)
    bce = -log_p_adv.gather(1, y[:, None]).squeeze(1) - log_one_minus_max
    # misclassification-aware KL: KL(p(x) ‖ p(x')) · (1 − p_y(x))
    log_p_clean = F.log_softmax(logits_clean, dim=1)
    p_clean = log_p_clean.exp()
    kl = (p_clean * (log_p_clean - log_p_adv)).sum(1)
    weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
    return (bce + beta * kl * weight).mean()


@TRAINING_METHODS.register()
class MART(TrainingMethod):
    """MART (Wang et al. 2020): boosted CE on PGD examples + λ-weighted, misclassification-aware KL.

    Args:
        eps: ε, the L∞ PGD radius in [0, 1] pixel units.
        steps: PGD iterations.
        step_size: PGD step in [0, 1] pixel units.
        beta: λ, the weight of the KL term (:func:`mart_loss`).
        seed: makes the PGD random starts reproducible (one attack seed per batch from a local
            generator); None uses the global RNG.

    Raises:
        ValueError: ``beta`` is negative.

    Stats: ``train_acc`` (clean), ``train_adv_acc``.
    """

    name = "mart"

    def __init__(
        self,
        eps: Eps = 8 / 255,
        steps: int = 10,
        step_size: Eps = 2 / 255,
        beta: float = 6.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, beta=beta, seed=seed)
        if beta < 0:
            raise ValueError(f"mart: beta must be >= 0, got {beta}")
        self.eps, self.steps, self.step_size, self.beta = float(eps), int(steps), float(step_size), float(beta)
        self.seed = seed

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MART Eqs. (6)–(8) (:func:`mart_loss`) on the batch and its L∞ PGD adversarial examples."""
        attack = PGD(model, eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=True,
                     seed=self.attack_seed())
        x_adv = attack(x, y)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        loss = mart_loss(logits_clean, logits_adv, y, self.beta)
        return loss, {
            "train_acc": (logits_clean.argmax(1) == y).float().mean().item(),
            "train_adv_acc": (logits_adv.argmax(1) == y).float().mean().item(),
        }
