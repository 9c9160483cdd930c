"""The attack contract, owned by one base class so each attack file implements only its step.

* Inputs are float NCHW images in [0, 1]; outputs stay in [0, 1] and inside the ε-ball.
* The model runs in eval mode during the attack; the caller's mode is restored afterwards.
* Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only: parameter ``.grad`` is
  never touched.
* A ``seed`` makes random starts reproducible without disturbing the global RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode; restore each module's mode on exit."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)


class Attack:
    """Base class. Subclasses implement :meth:`perturb`.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the budget, a fraction of the [0, 1] range (L∞) or an L2 radius.
        norm: ``"linf"`` or ``"l2"``.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: seed for random starts; ``None`` uses the global RNG.
    """

    name = "attack"
    norms: tuple[str, ...] = ("linf",)

    def __init__(
        self, model: nn.Module, eps: float, norm: str = "linf", targeted: bool = False, seed: int | None = None
    ) -> None:
        if norm not in self.norms:
            raise ValueError(f"{self.name}: norm {norm!r} not supported; allowed: {', '.join(self.norms)}")
        if eps < 0:
            raise ValueError(f"{self.name}: eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.norm = norm
        self.targeted = targeted
        self.seed = seed

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{self.name}: images must be float in [0, 1], got {images.dtype}")
        images = images.detach()
        with eval_mode(self.model):
            if self.eps == 0:
                return images.clone()
            adv = self.perturb(images, labels.detach())
        return adv.detach()

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def loss_grad(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gradient of the (mean) cross-entropy w.r.t. ``x``; descends it when targeted."""
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, labels)
        if self.targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, x)
        return grad.detach()
