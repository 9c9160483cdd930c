"""Fast adversarial training — Wong, Rice & Kolter, "Fast is better than free: Revisiting
adversarial training", ICLR 2020, Algorithm 3 (FGSM adversarial training with random init):

    δ ~ U(−ε, ε)^d
    δ ← δ + α · sign(∇_δ CE(f_θ(x + δ), y))
    δ ← max(min(δ, ε), −ε)
    θ ← θ − η · ∇_θ CE(f_θ(x + δ), y)

with α = 1.25·ε (the paper's recommended step). Images stay in [0, 1]: ``x + δ`` is clipped to
[0, 1] after the random init and after the step (as the authors' experiments do).
The input gradient is taken with ``torch.autograd.grad`` in eval mode (the repository's attack
contract: BN statistics untouched, the caller's mode restored, parameter ``.grad`` untouched);
the training loss ``CE(f(x + δ), y)`` is computed in the caller's mode. (Algorithm 3 does not fix
the BN mode of the attack forward pass; this eval-mode choice is this repository's.)

Cyclic learning rates and mixed precision, the paper's other speed-ups, belong to the training loop
and are not part of this method. Defaults: ε = 8/255, α = 1.25·ε (``alpha=None``).
``seed`` (optional) seeds a local ``torch.Generator`` for the random init; it advances from batch
to batch, so runs are reproducible without touching the global RNG. ``None`` uses the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.config import Eps
from medrobust.attacks.base import eval_mode
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


def fast_at_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x + δ`` after the random init and one FGSM step (Algorithm 3), in [0, 1] and the ε-box.

    The gradient is taken in eval mode w.r.t. δ only (the caller's mode and parameter ``.grad``
    untouched).

    Args:
        model: the classifier (logits from images in [0, 1]).
        x: images ``[N, C, H, W]`` in [0, 1].
        y: class indices ``[N]``.
        eps: ε, the L∞ radius in [0, 1] pixel units.
        alpha: α, the FGSM step in [0, 1] pixel units (the paper's 1.25·ε is chosen by :class:`FastAT`).
        generator: source of the uniform init ``δ ~ U(−ε, ε)``; None uses the global RNG.

    Returns:
        The adversarial images, detached, same shape as ``x``, in [0, 1] and within ε of ``x``.
    """
    x, y = x.detach(), y.detach()
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    delta = (2 * u - 1) * eps
    delta = torch.clamp(x + delta, 0.0, 1.0) - x
    with eval_mode(model):
        delta = delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
    delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
    return torch.clamp(x + delta, 0.0, 1.0).detach()


@TRAINING_METHODS.register()
class FastAT(TrainingMethod):
    """Fast adversarial training (Wong et al. 2020, Algorithm 3): CE on a random-init FGSM batch.

    Args:
        eps: ε, the L∞ radius in [0, 1] pixel units.
        alpha: α, the FGSM step in [0, 1] pixel units; None: 1.25·ε (the paper's recommendation).
        seed: seeds a local generator for the random init (advancing from batch to batch); None
            uses the global RNG.

    Raises:
        ValueError: ``eps`` or ``alpha`` is negative.

    Stats: ``train_adv_acc``.
    """

    name = "fast_at"

    def __init__(self, eps: Eps = 8 / 255, alpha: Eps | None = None, seed: int | None = None) -> None:
        alpha = 1.25 * eps if alpha is None else alpha
        super().__init__(eps=eps, alpha=alpha, seed=seed)
        if eps < 0 or alpha < 0:
            raise ValueError("fast_at: eps and alpha must be >= 0")
        self.eps, self.alpha, self.seed = float(eps), float(alpha), seed

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Algorithm 3's training loss ``CE(f(x + δ), y)``, δ from :func:`fast_at_perturbation`."""
        x_adv = fast_at_perturbation(model, x, y, self.eps, self.alpha, self.generator(x.device))
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_adv_acc": (logits.argmax(1) == y).float().mean().item()}
