"""The attack contract, owned by base classes so each attack file implements only its step.

* Inputs are float NCHW images in [0, 1]; outputs stay in [0, 1] and inside the ε-ball.
* The model runs in eval mode during the attack; the caller's mode is restored afterwards.
* Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only: parameter ``.grad`` is
  never touched.
* A ``seed`` makes random starts reproducible without disturbing the global RNG.

Two ways to call an attack:

* ``attack(images, labels)`` returns adversarial images. For the iterative gradient attacks this is
  the *last iterate*, exactly as torchattacks 3.5 computes it.
* ``attack.run(images, labels, active=None, early_stop=True)`` is what robust evaluation uses: it
  returns ``(x_adv, fooled)`` where, per point, ``x_adv`` is the *first iterate that fooled the
  model* (else the last one) and ``fooled`` says whether any iterate did. With ``early_stop`` a point
  leaves the batch as soon as it is fooled (and points with ``active=False`` are never attacked).
  Random starts are drawn for the whole batch first, so a point's trajectory does not depend on
  which other points are still being attacked: early stopping saves time and changes no result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.utils.registry import Registry


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


#: name -> attack class; each class registers itself under its ``name`` (``@ATTACKS.register()``).
ATTACKS: Registry[type[Attack]] = Registry("attack")


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

    def _check(self, images: torch.Tensor) -> None:
        if images.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{self.name}: images must be float in [0, 1], got {images.dtype}")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(images)
        images = images.detach()
        with eval_mode(self.model):
            if self.eps == 0:
                return images.clone()
            adv = self.perturb(images, labels.detach())
        return adv.detach()

    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        active: torch.Tensor | None = None,
        early_stop: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv, fooled)`` for robust evaluation (see the module docstring).

        The default runs the attack on the active points and checks the result once; iterative
        attacks override it to track every iterate.
        """
        self._check(images)
        images, labels = images.detach(), labels.detach()
        n = len(images)
        active = torch.ones(n, dtype=torch.bool, device=images.device) if active is None else active.clone()
        x_adv = images.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=images.device)
        idx = active.nonzero().squeeze(1) if early_stop else torch.arange(n, device=images.device)
        if idx.numel() == 0:
            return x_adv, fooled
        x_adv[idx] = self(images[idx], labels[idx])
        with eval_mode(self.model), torch.no_grad():
            fooled[idx] = self.is_fooled(self.model(x_adv[idx]), labels[idx])
        return x_adv, fooled

    def is_fooled(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == labels if self.targeted else pred != labels

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def loss_grad(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient of the mean cross-entropy w.r.t. ``x``, logits at ``x``); descends when targeted."""
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, labels)
        if self.targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, x)
        return grad.detach(), logits.detach()


class IterativeAttack(Attack):
    """An attack made of ``steps`` identical iterations: subclasses implement :meth:`init_adv`,
    optionally :meth:`init_state` (per-point tensors such as momentum), and :meth:`step`."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = False,
        targeted: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, eps, norm, targeted, seed)
        if steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start = random_start

    def init_adv(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def init_state(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def step(
        self, adv: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: returns (next iterate, logits at ``adv``); may update ``state`` in place."""
        raise NotImplementedError

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = self.init_adv(images)
        state = self.init_state(images)
        for _ in range(self.steps):
            adv, _ = self.step(adv, images, labels, state)
        return adv

    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        active: torch.Tensor | None = None,
        early_stop: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(images)
        images, labels = images.detach(), labels.detach()
        n, device = len(images), images.device
        todo = torch.ones(n, dtype=torch.bool, device=device) if active is None else active.clone()
        if not early_stop:
            todo[:] = True
        fooled = torch.zeros(n, dtype=torch.bool, device=device)
        with eval_mode(self.model):
            if self.eps == 0:
                with torch.no_grad():
                    return images.clone(), self.is_fooled(self.model(images), labels) & todo
            adv = self.init_adv(images)  # the whole batch: random starts do not depend on `active`
            state = self.init_state(images)
            best = adv.clone()
            for t in range(self.steps + 1):
                live = todo & ~fooled if early_stop else todo
                idx = live.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                if t < self.steps:
                    sub = {k: v[idx] for k, v in state.items()}
                    nxt, logits = self.step(adv[idx], images[idx], labels[idx], sub)
                    for k, v in sub.items():
                        state[k][idx] = v
                else:  # the last iterate only needs a forward pass
                    with torch.no_grad():
                        logits, nxt = self.model(adv[idx]), None
                newly = self.is_fooled(logits, labels[idx]) & ~fooled[idx]
                hit = idx[newly]
                best[hit] = adv[hit]
                fooled[hit] = True
                if nxt is not None:
                    adv[idx] = nxt
        keep = ~fooled
        best[keep] = adv[keep]
        return best.detach(), fooled
