"""Square Attack — Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020, arXiv 1912.00049.

Score-based black box: the attack only reads the model's logits (forward passes under
``torch.no_grad``), never its gradients. Random search over the vertices of the L∞ ε-ball:

1. Initialise with vertical stripes: ``x₀ = clip_[0,1](x + ε·s)``, one random sign ``s = ±1`` per
   (image, channel, column), constant along the height.
2. Each iteration, for every image not yet fooled, pick one square window of side ``s_k`` at a
   uniformly random position (every position where it fits) and set the perturbation inside it
   to ``±ε`` (one random sign per channel). The candidate is kept only if it lowers the loss
   (strict improvement); an image stops being queried once its margin is negative (fooled).
3. ``s_k = max(round(sqrt(p_k · n_features / C)), 1)`` pixels (clipped to ``min(H, W) - 1``),
   ``n_features = C·H·W``; ``p_k`` follows the paper's piecewise-constant schedule defined for
   10,000 iterations (``p_init`` halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000),
   rescaled to ``n_queries`` as in the authors' reference code.

Distance measure: L∞ only. The paper's L2 variant (a different sampling distribution built from
pairs of centred "pseudo-Gaussian" squares) is **not** provided; ``norm="l2"`` raises.

Loss: ``"margin"`` (default) ``Z_y - max_{j≠y} Z_j``, minimised; ``"ce"`` minimises ``-CE(Z, y)``.
Targeted (``labels`` are targets): ``"margin"`` minimises ``max_{j≠t} Z_j - Z_t``, ``"ce"`` minimises
``CE(Z, t)`` (the reference uses CE for targeted attacks). In both cases an image counts as fooled,
and stops, once its margin (untargeted ``Z_y - max_{j≠y} Z_j``, targeted ``max_{j≠t} Z_j - Z_t``)
is negative.

Queries: the stripe initialisation is query 1, each random-search step one more, so
``queries_used <= n_queries`` per restart (``<= n_restarts · n_queries`` in total). The one clean
forward pass that decides which images to attack is not counted (the paper attacks only correctly
classified points); images misclassified at the start (for targeted: already predicted as the
target) are returned unchanged with ``queries_used == 0``. Later restarts run only on images still
not fooled and replace an image's output only when they fool it.

Defaults (the paper's): ``n_queries=1000`` here (the paper uses 10,000), ``p_init=0.8``
(0.05 in the paper's ImageNet experiments; 0.8 is its setting for small images / the AutoAttack
version), ``n_restarts=1``, ``loss="margin"``.

Args (constructor):
    model: classifier taking [0, 1] NCHW images, returning logits.
    eps: L∞ radius (fraction of the [0, 1] range).
    norm: ``"linf"``.
    n_queries: query budget per image and restart (>= 1).
    p_init: initial fraction of the ``n_features`` changed by a square, in (0, 1].
    n_restarts: number of independent runs on the images not yet fooled.
    loss: ``"margin"`` or ``"ce"``.
    targeted: if True, ``labels`` passed to the call are the target classes.
    seed: seeds a local ``torch.Generator``; ``None`` uses the global RNG.

Implementation choices where the paper leaves freedom: the window position and signs are drawn per
image (as in the authors' original code); a candidate that leaves the image unchanged (e.g. the
window already holds the sampled signs) is resampled, at most ``_MAX_RESAMPLE`` times, as the
reference's ``while`` loop does.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from medrobust.attacks.base import ATTACKS, Attack

log = logging.getLogger(__name__)

# Iteration thresholds of the paper's schedule (defined for 10,000 iterations): after each one p halves.
_SCHEDULE_10K = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_MAX_RESAMPLE = 10
_LOSSES = ("margin", "ce")


@ATTACKS.register()
class Square(Attack):
    """Square Attack (L∞), score-based black box. See the module docstring.

    Args:
        model: classifier taking [0, 1] NCHW images, returning logits.
        eps: L∞ radius (fraction of the [0, 1] range).
        norm: ``"linf"``.
        n_queries: query budget per image and restart (>= 1); default 1000.
        p_init: initial fraction of the ``n_features`` changed by a square, in (0, 1]; default 0.8.
        n_restarts: number of independent runs on the images not yet fooled (>= 1); default 1.
        loss: ``"margin"`` (default) or ``"ce"``.
        targeted: if True, ``labels`` passed to the call are the target classes.
        seed: seeds a local ``torch.Generator``; ``None`` uses the global RNG.

    Raises:
        ValueError: ``n_queries < 1``, ``p_init`` outside (0, 1], ``n_restarts < 1``, an unknown
            ``loss``, a norm other than ``"linf"`` or ``eps < 0``.

    Attributes:
        queries_used: after a call, a ``long`` tensor ``(N,)`` of model queries spent per image
            (``None`` before the first call).
    """

    name = "square"
    norms = ("linf",)

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float,
        norm: str = "linf",
        n_queries: int = 1000,
        p_init: float = 0.8,
        n_restarts: int = 1,
        loss: str = "margin",
        targeted: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, eps, norm, targeted, seed)
        if n_queries < 1:
            raise ValueError(f"square: n_queries must be >= 1, got {n_queries}")
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"square: p_init must be in (0, 1], got {p_init}")
        if n_restarts < 1:
            raise ValueError(f"square: n_restarts must be >= 1, got {n_restarts}")
        if loss not in _LOSSES:
            raise ValueError(f"square: loss {loss!r} not supported; allowed: {', '.join(_LOSSES)}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.n_restarts = int(n_restarts)
        self.loss = loss
        self.queries_used: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:meth:`Attack.__call__`, also setting :attr:`queries_used` (zeros when ``eps == 0``)."""
        # reset so that eps == 0 (handled by the base class without perturb) reports zero queries
        self.queries_used = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return super().__call__(images, labels)

    # -- pieces ---------------------------------------------------------------------------------
    def p_selection(self, it: int) -> float:
        """Fraction ``p`` at iteration ``it`` (0-based): the 10k-iteration schedule rescaled to ``n_queries``.

        Args:
            it: the random-search iteration, 0-based (the stripe initialisation excluded).

        Returns:
            ``p_init / 2**h``, ``h`` the number of schedule thresholds below ``it · 10000 / n_queries``.

        Example:
            >>> Square(model, eps=8 / 255, n_queries=1000).p_selection(5)  # 50 of 10k: one halving
            0.4
        """
        it_10k = int(it / self.n_queries * 10000)
        halvings = sum(it_10k > t for t in _SCHEDULE_10K)
        return self.p_init / 2**halvings

    def _margin_and_loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image margin (fooled iff < 0) and the loss to minimise."""
        logits = self.model(x)
        idx = torch.arange(logits.shape[0], device=logits.device)
        z_label = logits[idx, labels]
        others = logits.clone()
        others[idx, labels] = -float("inf")
        z_other = others.amax(dim=1)
        margin = z_other - z_label if self.targeted else z_label - z_other
        if self.loss == "margin":
            return margin, margin
        ce = F.cross_entropy(logits, labels, reduction="none")
        return margin, (ce if self.targeted else -ce)

    @staticmethod
    def _signs(shape: tuple[int, ...], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, generator=g, device=like.device)
        return bits.to(like.dtype) * 2 - 1

    def _single_run(
        self, x: torch.Tensor, labels: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run of the random search on ``x`` (all images not fooled yet).

        Returns:
            ``(x_best, margin_best, queries)``.
        """
        n, c, h, w = x.shape
        n_features = c * h * w
        eps = self.eps
        device = x.device
        lower = (x - eps).clamp(0.0, 1.0)
        upper = (x + eps).clamp(0.0, 1.0)

        # vertical stripes: one sign per (image, channel, column)
        x_best = torch.minimum(torch.maximum(x + eps * self._signs((n, c, 1, w), g, x), lower), upper)
        margin_min, loss_min = self._margin_and_loss(x_best, labels)
        queries = torch.ones(n, dtype=torch.long, device=device)

        # the images still queried, compacted: ``live`` maps them back; results are written back as
        # images leave (fooled) and at the end
        out_best, out_margin = x_best.clone(), margin_min.clone()
        live = torch.arange(n, device=device)
        s_x, s_lo, s_hi, s_y = x, lower, upper, labels
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        side_max = max(min(h, w) - 1, 1)
        for it in range(self.n_queries - 1):
            done = margin_min <= 0
            if bool(done.any()):
                out_best[live[done]], out_margin[live[done]] = x_best[done], margin_min[done]
                keep = ~done
                live, s_x, s_lo, s_hi, s_y = live[keep], s_x[keep], s_lo[keep], s_hi[keep], s_y[keep]
                x_best, margin_min, loss_min = x_best[keep], margin_min[keep], loss_min[keep]
            m = live.numel()
            if m == 0:
                break
            p = self.p_selection(it)
            side = min(max(int(round(math.sqrt(p * n_features / c))), 1), side_max)
            vh = torch.randint(0, h - side + 1, (m,), generator=g, device=device)
            vw = torch.randint(0, w - side + 1, (m,), generator=g, device=device)
            in_rows = (rows[None, :] >= vh[:, None]) & (rows[None, :] < vh[:, None] + side)
            in_cols = (cols[None, :] >= vw[:, None]) & (cols[None, :] < vw[:, None] + side)
            window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (m, 1, h, w)

            # x ± eps clipped to [0, 1] is inside [lower, upper]: the candidate needs no other clip
            signs = self._signs((m, c, 1, 1), g, x)
            x_new = torch.where(window, torch.where(signs > 0, s_hi, s_lo), x_best)
            for _ in range(_MAX_RESAMPLE):  # a candidate equal to the current best wastes a query
                same = (x_new - x_best).abs().flatten(1).amax(dim=1) < 1e-7
                if not bool(same.any()):
                    break
                signs = torch.where(same[:, None, None, None], self._signs((m, c, 1, 1), g, x), signs)
                x_new = torch.where(window, torch.where(signs > 0, s_hi, s_lo), x_best)

            margin, loss = self._margin_and_loss(x_new, s_y)
            queries[live] += 1
            improved = loss < loss_min
            loss_min = torch.where(improved, loss, loss_min)
            margin_min = torch.where(improved, margin, margin_min)
            x_best = torch.where(improved[:, None, None, None], x_new, x_best)
        out_best[live], out_margin[live] = x_best, margin_min
        return out_best, out_margin, queries

    @torch.no_grad()
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Random search with restarts on the images not fooled at the start; sets :attr:`queries_used`.

        Raises:
            ValueError: ``images`` is not 4-D (NCHW).
        """
        if images.dim() != 4:
            raise ValueError(f"square: images must be NCHW, got shape {tuple(images.shape)}")
        g = self.generator(images.device)
        labels = labels.to(images.device)
        adv = images.clone()
        queries = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        margin, _ = self._margin_and_loss(images, labels)
        to_attack = margin > 0  # correctly classified (targeted: not yet the target)
        n_start = int(to_attack.sum())
        for restart in range(self.n_restarts):
            idx = to_attack.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_best, margin_best, q = self._single_run(images[idx], labels[idx], g)
            queries[idx] += q
            fooled = margin_best < 0
            keep = torch.ones_like(fooled) if restart == 0 else fooled
            adv[idx[keep]] = x_best[keep]
            to_attack[idx[fooled]] = False
            log.debug("square restart %d: fooled %d / %d", restart, int(fooled.sum()), idx.numel())
        self.queries_used = queries
        log.debug(
            "square: %d of %d images attacked, %d still robust, mean queries %.1f",
            n_start,
            images.shape[0],
            int(to_attack.sum()),
            float(queries[queries > 0].float().mean()) if n_start else 0.0,
        )
        return adv
