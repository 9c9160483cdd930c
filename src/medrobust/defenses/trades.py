"""TRADES — Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019, Eq. (5) / Algorithm 1:

    min_θ  E_(x,y) [ CE(f_θ(x), y) + β · max_{‖x' − x‖∞ ≤ ε} KL( softmax f_θ(x) ‖ softmax f_θ(x') ) ]

* The KL is averaged over the batch ("batchmean"): summed over classes, mean over samples
  (:func:`trades_kl`).
* Inner maximisation (Algorithm 1): start at ``x + 0.001·N(0, I)`` (the paper's reference
  initialisation), then ``steps`` iterations of ``x' ← Π_{B∞(x, ε) ∩ [0,1]}(x' + step_size ·
  sign(∇_x' KL(p(x) ‖ p(x'))))``. The clean distribution ``p(x)`` is a fixed (detached) target here.
  The attack runs with the model in eval mode (BN statistics untouched, the caller's mode restored)
  and differentiates w.r.t. the input only (``torch.autograd.grad``), so parameter ``.grad`` is never
  touched.
* The outer loss is computed in the caller's mode (training mode in the loop); gradients flow
  through both ``f(x)`` and ``f(x')``, as in the paper's objective.

Defaults: ε = 8/255, 10 steps of 2/255, β = 6.0 (the paper's CIFAR-10 setting, 1/λ = 6).
``seed`` (optional) seeds a local generator for the initial noise; it advances from batch to batch,
so runs are reproducible without touching the global RNG. ``None`` uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks.base import eval_mode
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``(1/n) Σ_i Σ_k p_k(x_i) · (log p_k(x_i) − log p_k(x'_i))`` with ``p = softmax(logits)``.

    Args:
        logits_clean: logits ``[N, K]`` of the clean images (the KL's first argument; not detached).
        logits_adv: logits ``[N, K]`` of the adversarial images.

    Returns:
        The scalar ``KL(p(x) ‖ p(x'))``, summed over classes and averaged over the batch.
    """
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1),
                    reduction="batchmean", log_target=True)


def trades_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES' inner maximisation of ``KL(p(x) ‖ p(x'))`` in the L∞ ε-ball (eval mode, input grads only).

    Starts at ``x + 0.001·N(0, I)`` and takes ``steps`` signed-gradient steps on the summed KL to
    the fixed clean distribution, projecting onto the ε-ball and [0, 1] after each step.

    Args:
        model: the classifier (logits from images in [0, 1]).
        x: images ``[N, C, H, W]`` in [0, 1].
        eps: ε, the L∞ radius in [0, 1] pixel units.
        steps: number of iterations (0: the projected initial noise is returned).
        step_size: step per iteration in [0, 1] pixel units.
        generator: source of the initial Gaussian noise; None uses the global RNG.

    Returns:
        ``x'``, detached, same shape as ``x``, in [0, 1] and within ε of ``x``.
    """
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            log_p_clean = F.log_softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                            device=generator.device if generator is not None else x.device).to(x.device)
        x_adv = x + 0.001 * noise
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), log_p_clean, reduction="sum", log_target=True)
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)
    return x_adv.detach()


@TRAINING_METHODS.register()
class TRADES(TrainingMethod):
    """TRADES (Zhang et al. 2019, Eq. 5): ``CE(f(x), y) + β · KL(p(x) ‖ p(x'))``, ``x'`` by Algorithm 1.

    Args:
        eps: ε, the L∞ radius in [0, 1] pixel units.
        steps: iterations of the inner maximisation (:func:`trades_perturbation`).
        step_size: step per iteration in [0, 1] pixel units.
        beta: β (= 1/λ in the paper), the weight of the KL term.
        seed: seeds a local generator for the initial noise (advancing from batch to batch); None
            uses the global RNG.

    Raises:
        ValueError: any of ``eps``, ``steps``, ``step_size``, ``beta`` is negative.

    Stats: ``train_acc`` (clean), ``train_adv_acc``, ``train_kl``.
    """

    name = "trades"

    def __init__(
        self,
        eps: Eps = 8 / 255,
        steps: int = 10,
        step_size: Eps = 2 / 255,
        beta: float = 6.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, beta=beta, seed=seed)
        if eps < 0 or steps < 0 or step_size < 0 or beta < 0:
            raise ValueError("trades: eps, steps, step_size and beta must be >= 0")
        self.eps, self.steps, self.step_size, self.beta = float(eps), int(steps), float(step_size), float(beta)
        self.seed = seed

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """TRADES Eq. (5): ``CE(f(x), y) + β · KL(p(x) ‖ p(x'))``, gradients through both logits."""
        x_adv = trades_perturbation(model, x, self.eps, self.steps, self.step_size, self.generator(x.device))
        logits_clean = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_clean, y)
        robust = trades_kl(logits_clean, logits_adv)
        loss = natural + self.beta * robust
        return loss, {
            "train_acc": (logits_clean.argmax(1) == y).float().mean().item(),
            "train_adv_acc": (logits_adv.argmax(1) == y).float().mean().item(),
            "train_kl": robust.item(),
        }
