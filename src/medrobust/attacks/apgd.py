"""APGD — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv 2003.01690 (Algorithm 1, Sec. 3).

Step-size-free projected gradient ascent with momentum:

* ``z = P(x⁽ᵏ⁾ + η⁽ᵏ⁾·s(∇f(x⁽ᵏ⁾)))``, ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z - x⁽ᵏ⁾) + (1-α)(x⁽ᵏ⁾ - x⁽ᵏ⁻¹⁾))`` with
  ``α = 0.75`` (first step: ``x⁽¹⁾ = P(x⁽⁰⁾ + η·s(∇f))``); ``s`` is the sign (L∞) or the
  L2-normalised gradient (L2); ``P`` projects onto the ε-ball, then clips to [0, 1].
* ``η⁽⁰⁾ = 2ε``. At checkpoints ``w_j = ⌈p_j·N⌉`` with ``p₀ = 0``, ``p₁ = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` the step size of a point is halved and the point
  restarts from its best iterate if (1) the loss increased in fewer than ``ρ = 0.75`` of the steps
  since the last checkpoint, or (2) neither its step size nor its best loss changed since then.
  On such a restart the momentum is reset too (``x⁽ᵏ⁾ = x⁽ᵏ⁺¹⁾ = x_max``).
* Random start ``x + ε·t/‖t‖`` (``t ~ U(-1, 1)`` for L∞, ``N(0, I)`` for L2), clipped to [0, 1];
  ``n_restarts`` restarts, each only on the points not fooled yet.

Losses (maximised, per point):

* ``ce``: cross-entropy (targeted: minus the CE of the target).
* ``dlr``: ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3 + 1e-12)`` — needs ≥ 3 classes; targeted
  ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2 + 1e-12)`` — needs ≥ 4 classes.
* ``margin``: the CW margin ``max_{i≠y} z_i - z_y`` (targeted ``z_t - max_{i≠t} z_i``): scale
  dependent, unlike DLR, but defined for 2 classes. This is what we use on binary tasks.

Targeted mode (``targeted=True``) follows APGD-T: it runs once per target class, the targets being
the classes with the 2nd, 3rd, … highest clean logits, ``n_target_classes`` of them
(default ``min(9, C-1)``); ``labels`` are then the true labels, not targets. The runs of a point's
targets are rows of one batch (up to ``max_rows`` rows), each from its own random start.

Early stopping happens inside the run: a row leaves the batch the step its point is misclassified
(and, in targeted mode, so do that point's other targets). A point's trajectory depends only on
its own rows, so this saves time and changes no result.

Returned per point: the first iterate that fooled the model if any, else the iterate with the
highest loss. Defaults: ``steps=100``, ``n_restarts=1``, ``rho=0.75``, ``momentum=0.75``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.base import ATTACKS, Attack, eval_mode
from medrobust.attacks.pgdl2 import l2_norms

LOSSES = ("ce", "dlr", "margin")
#: without ``max_rows``, targets share a batch up to this many input elements (or the caller's batch)
_ROW_ELEMENTS = 2**18


def checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j = ⌈p_j·N⌉`` at which step sizes are checked (``w₀ = 0`` excluded).

    Args:
        n_iter: the number of iterations ``N``.

    Returns:
        The distinct checkpoints below ``n_iter``, ascending.

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = {math.ceil(round(q * n_iter, 9)) for q in p[1:]}  # round: 0.57 * 100 is 57.000000000000007
    return sorted(k for k in w if k < n_iter)


def _other_max(z: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """max_{i ≠ cls} z_i per row."""
    masked = z.clone()
    masked.scatter_(1, cls.view(-1, 1), float("-inf"))
    return masked.max(1).values


def per_point_loss(kind: str, z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The loss APGD maximises, one value per point (see the module docstring).

    Args:
        kind: ``"ce"``, ``"dlr"`` or ``"margin"`` (any other value is read as ``"dlr"``).
        z: ``(N, C)`` logits; DLR needs ``C >= 3`` (targeted: ``C >= 4``).
        y: ``(N,)`` true classes.
        target: ``(N,)`` target classes for the targeted form, or ``None`` for the untargeted one.

    Returns:
        ``(N,)`` losses, differentiable w.r.t. ``z``.
    """
    if kind == "ce":
        return -F.cross_entropy(z, target, reduction="none") if target is not None else F.cross_entropy(
            z, y, reduction="none")
    z_y = z.gather(1, y.view(-1, 1)).squeeze(1)
    if kind == "margin":
        if target is None:
            return _other_max(z, y) - z_y
        z_t = z.gather(1, target.view(-1, 1)).squeeze(1)
        return z_t - _other_max(z, target)
    # DLR
    zs = z.sort(dim=1, descending=True).values
    if target is None:
        return -(z_y - _other_max(z, y)) / (zs[:, 0] - zs[:, 2] + 1e-12)
    z_t = z.gather(1, target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


class APGD(Attack):
    """APGD with a chosen loss; registered as ``apgd_ce``, ``apgd_dlr`` and ``apgd_margin``.

    Args:
        model: a classifier taking [0, 1] images and returning logits.
        eps: the budget, a fraction of the [0, 1] range (L∞) or an L2 radius; default 8/255.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations ``N`` per run (>= 1); default 100.
        n_restarts: random restarts per target (>= 1), each only on points not fooled yet; default 1.
        rho: the checkpoint condition ρ: the step size halves if the loss rose in fewer than this
            fraction of the steps since the last checkpoint; default 0.75.
        momentum: the weight α of the new step against the previous one; default 0.75.
        targeted: APGD-T: attack each of the top ``n_target_classes`` other classes in turn;
            ``labels`` stay the true classes.
        n_target_classes: targets per point in targeted mode; ``None``: ``min(9, C-1)``.
        loss: ``"ce"``, ``"dlr"`` or ``"margin"``; ``None`` takes the class's ``loss_kind``.
        seed: seed for the random starts; ``None`` uses the global RNG.
        max_rows: targeted mode: the most (point, target) rows in one batch; ``None``: the larger of
            the caller's batch and ``2**18`` input elements' worth of rows (4,096 rows of 8×8
            images, 334 of 28×28: small images, where a batch is mostly per-operation overhead).

    Raises:
        ValueError: an unknown ``loss``, ``steps`` or ``n_restarts`` below 1, ``max_rows`` below 1,
            an unsupported ``norm``, or ``eps < 0``.
    """

    name = "apgd"
    norms = ("linf", "l2")
    loss_kind = "ce"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        n_restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        targeted: bool = False,
        n_target_classes: int | None = None,
        loss: str | None = None,
        seed: int | None = None,
        max_rows: int | None = None,
    ) -> None:
        super().__init__(model, eps, norm, targeted, seed)
        self.loss = loss or self.loss_kind
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss {self.loss!r} not supported; allowed: {', '.join(LOSSES)}")
        if steps < 1 or n_restarts < 1:
            raise ValueError(f"{self.name}: steps and n_restarts must be >= 1")
        self.steps, self.n_restarts, self.rho, self.alpha = int(steps), int(n_restarts), rho, momentum
        self.n_target_classes = n_target_classes
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"{self.name}: max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows

    # -- the projection and the steepest-ascent direction of the threat model ----------------------
    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * torch.clamp(self.eps / (l2_norms(delta) + 1e-12), max=1.0)
        return torch.clamp(x + delta, 0.0, 1.0)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign() if self.norm == "linf" else grad / (l2_norms(grad) + 1e-12)

    def _random_start(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) - 1
            t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        else:
            t = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            t = t / (l2_norms(t) + 1e-12)
        return torch.clamp(x + self.eps * t, 0.0, 1.0)

    def _loss_grad(self, x_adv, y, target):
        x_adv = x_adv.detach().requires_grad_(True)
        z = self.model(x_adv)
        loss = per_point_loss(self.loss, z, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), grad.detach(), z.detach()

    def _fooled(self, z, y, target):
        pred = z.argmax(1)
        return pred == target if target is not None else pred != y

    # -- one APGD run from given starts, on rows (a row: a point, or a point and one target) -----
    def _apgd(self, x, y, x0, target, group, early_stop):
        """APGD on rows; ``group`` maps each row to its point. Returns (out, fooled) per row.

        With ``early_stop``, once a row misclassifies its point, every row of that point leaves the
        batch, its output frozen (the fooling iterate for a row that fooled, its best iterate for the
        others); without it every row runs every step.
        """
        shape = (-1,) + (1,) * (x.dim() - 1)
        out, fooled_out = x0.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        loss, grad, z = self._loss_grad(x0, y, target)
        eta = torch.full((len(x),), 2 * self.eps, device=x.device, dtype=x.dtype)
        # the live rows' state; ``rows`` maps them back to the rows of the call
        s = {"rows": torch.arange(len(x), device=x.device), "x": x, "y": y, "group": group, "grad": grad,
             "fooled": z.argmax(1) != y, "x_first": x0, "x_max": x0, "loss_max": loss, "loss_prev": loss,
             "x_prev": x0, "x_cur": self._project(x0 + eta.view(shape) * self._direction(grad), x), "eta": eta,
             "increases": torch.zeros_like(loss), "eta_at_ckpt": eta, "loss_max_at_ckpt": loss}
        if target is not None:
            s["target"] = target

        def leave(done: torch.Tensor) -> None:
            out[s["rows"][done]] = torch.where(s["fooled"][done].view(shape), s["x_first"][done], s["x_max"][done])
            fooled_out[s["rows"][done]] = s["fooled"][done]
            keep = ~done
            for key, value in s.items():
                s[key] = value[keep]

        if early_stop and bool(s["fooled"].any()):
            leave(torch.isin(s["group"], s["group"][s["fooled"]]))
        ckpts, last_ckpt = set(checkpoints(self.steps)), 0
        for k in range(1, self.steps + 1):
            if len(s["rows"]) == 0:
                return out, fooled_out
            loss, s["grad"], z = self._loss_grad(s["x_cur"], s["y"], s.get("target"))
            now = (z.argmax(1) != s["y"]) & ~s["fooled"]
            s["x_first"] = torch.where(now.view(shape), s["x_cur"], s["x_first"])
            s["fooled"] = s["fooled"] | now
            s["increases"] = s["increases"] + (loss > s["loss_prev"]).to(loss.dtype)
            better = loss > s["loss_max"]
            s["x_max"] = torch.where(better.view(shape), s["x_cur"], s["x_max"])
            s["loss_max"] = torch.where(better, loss, s["loss_max"])
            s["loss_prev"] = loss
            if k == self.steps:
                break
            if early_stop and bool(now.any()):  # every row of a point fooled now leaves
                leave(torch.isin(s["group"], s["group"][now]))
                if len(s["rows"]) == 0:
                    return out, fooled_out
            x_cur, x_prev, eta, x_nat = s["x_cur"], s["x_prev"], s["eta"], s["x"]
            zk = self._project(x_cur + eta.view(shape) * self._direction(s["grad"]), x_nat)
            s["x_prev"] = x_cur
            s["x_cur"] = self._project(x_cur + self.alpha * (zk - x_cur) + (1 - self.alpha) * (x_cur - x_prev), x_nat)
            if k in ckpts:
                cond1 = s["increases"] < self.rho * (k - last_ckpt)
                cond2 = (eta == s["eta_at_ckpt"]) & (s["loss_max"] == s["loss_max_at_ckpt"])
                reduce = cond1 | cond2
                s["eta"] = torch.where(reduce, eta / 2, eta)
                s["x_cur"] = torch.where(reduce.view(shape), s["x_max"], s["x_cur"])
                s["x_prev"] = torch.where(reduce.view(shape), s["x_max"], s["x_prev"])
                s["increases"] = torch.zeros_like(s["increases"])
                s["eta_at_ckpt"], s["loss_max_at_ckpt"], last_ckpt = s["eta"], s["loss_max"], k
        leave(torch.ones(len(s["rows"]), dtype=torch.bool, device=x.device))
        return out, fooled_out

    def _targets(self, z_clean: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor | None]:
        if not self.targeted:
            return [None]
        n_classes = z_clean.shape[1]
        if self.loss == "dlr" and n_classes < 4:
            raise ValueError(f"targeted DLR needs >= 4 classes, got {n_classes}; use loss 'margin'")
        k = self.n_target_classes or min(9, n_classes - 1)
        order = z_clean.sort(dim=1, descending=True).indices
        return [order[:, i] for i in range(1, min(k, n_classes - 1) + 1)]

    def _targets_per_chunk(self, x: torch.Tensor, n_live: int, n_targets: int) -> int:
        max_rows = self.max_rows or max(len(x), _ROW_ELEMENTS // max(x[0].numel(), 1))
        return max(1, min(n_targets, max_rows // max(n_live, 1)))

    def run(self, images, labels, active=None, early_stop=True):
        """:meth:`Attack.run` for APGD: a point misclassified on its clean image counts as fooled.

        In targeted mode the target classes of a point run together, as extra rows of one batch
        (at most :attr:`max_rows` rows; targets beyond that run in later chunks), and with
        ``early_stop`` all of a point's rows leave the batch the step one of them misclassifies it.
        Returns, per point, the first fooling iterate (of the earliest target that fooled it at
        that step), else the highest-loss iterate of the last target of the latest restart; without
        ``early_stop`` every restart and target runs on every point, every step.

        Raises:
            ValueError: DLR with fewer than 3 classes, or targeted DLR with fewer than 4.
            TypeError: ``images`` is not a float32 or float64 tensor.
        """
        self._check(images)
        x, y = images.detach(), labels.detach()
        n = len(x)
        todo = torch.ones(n, dtype=torch.bool, device=x.device) if active is None or not early_stop else active.clone()
        out = x.clone()
        with eval_mode(self.model):
            with torch.no_grad():
                z_clean = self.model(x)
            if self.loss == "dlr" and not self.targeted and z_clean.shape[1] < 3:
                raise ValueError(f"DLR needs >= 3 classes, got {z_clean.shape[1]}; use apgd_margin")
            # a point the model already gets wrong counts as fooled by its clean image (AutoAttack)
            fooled = z_clean.argmax(1) != y
            if self.eps == 0:
                return x.clone(), fooled
            g = self.generator(x.device)
            targets = self._targets(z_clean, y)
            for _ in range(self.n_restarts):
                # every target's start is drawn for the whole batch, whichever points are still live
                starts = [self._random_start(x, g) for _ in targets]
                first = 0
                while first < len(targets):
                    idx = (todo & ~fooled).nonzero().squeeze(1) if early_stop else todo.nonzero().squeeze(1)
                    if idx.numel() == 0:
                        break
                    chunk = range(first, first + self._targets_per_chunk(x, idx.numel(), len(targets) - first))
                    first = chunk.stop
                    group = idx.repeat(len(chunk))
                    t = None if targets[0] is None else torch.cat([targets[j][idx] for j in chunk])
                    adv, hit = self._apgd(x[group], y[group], torch.cat([starts[j][idx] for j in chunk]), t,
                                          group, early_stop)
                    # per point: the fooling row of the earliest target, else the last target's row
                    adv, hit = adv.view(len(chunk), len(idx), *x.shape[1:]), hit.view(len(chunk), len(idx))
                    pick = torch.where(hit.any(0), hit.to(torch.int8).argmax(0), len(chunk) - 1)
                    adv, hit = adv[pick, torch.arange(len(idx), device=x.device)], hit.any(0)
                    with torch.no_grad():  # the final check, on the images returned
                        hit = hit & (self.model(adv).argmax(1) != y[idx])
                    newly = hit & ~fooled[idx]
                    write = newly | ~fooled[idx]  # keep the first success; else the latest best
                    out[idx[write]] = adv[write]
                    fooled[idx[newly]] = True
        return out.detach(), fooled

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The adversarial images of :meth:`run` with early stopping."""
        return self.run(images, labels, early_stop=True)[0]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The adversarial images of :meth:`run` with early stopping (``eps == 0``: a copy of ``images``)."""
        self._check(images)
        return self.run(images.detach(), labels.detach(), early_stop=True)[0]

    def is_fooled(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Misclassified: ``labels`` are the true classes, in targeted mode too (APGD-T).

        Args:
            logits: ``(N, C)`` model outputs.
            labels: ``(N,)`` true classes.

        Returns:
            ``(N,)`` bool, True where the top-1 class is not the label.
        """
        return logits.argmax(1) != labels  # APGD-T: labels are true labels; success = misclassified


@ATTACKS.register()
class APGDCE(APGD):
    """APGD on the cross-entropy (``apgd_ce``). Args as :class:`APGD`."""

    name = "apgd_ce"
    loss_kind = "ce"


@ATTACKS.register()
class APGDDLR(APGD):
    """APGD on the DLR loss (``apgd_dlr``; >= 3 classes, targeted >= 4). Args as :class:`APGD`."""

    name = "apgd_dlr"
    loss_kind = "dlr"


@ATTACKS.register()
class APGDMargin(APGD):
    """APGD on the CW margin loss (``apgd_margin``; defined for 2 classes). Args as :class:`APGD`."""

    name = "apgd_margin"
    loss_kind = "margin"
