"""Randomized smoothing — Cohen, Rosenfeld & Kolter, "Certified adversarial robustness via randomized
smoothing", ICML 2019, arXiv 1902.02918.

The smoothed classifier ``g(x) = argmax_c P(f(x + ε) = c)``, ``ε ~ N(0, σ²I)``, is robust within
the L2 radius ``R = σ·Φ⁻¹(p_A)`` around ``x`` whenever its top class has probability ``p_A > ½``
(Theorem 1, with ``p_B = 1 - p_A``). Both algorithms estimate ``p_A`` by Monte Carlo:

* :func:`certify` (CERTIFY, the paper's Algorithm "certify"): ``n0`` noisy samples select the class
  ``ĉ_A``; ``n`` fresh samples count it, ``n_A``; ``p̲_A`` is the one-sided ``1 - α`` Clopper–Pearson
  lower bound of ``n_A / n`` (``Beta(α; n_A, n - n_A + 1)``, scipy); it returns ``ĉ_A`` and
  ``σ·Φ⁻¹(p̲_A)`` if ``p̲_A > ½``, else abstains (class ``-1``, radius 0). With probability at least
  ``1 - α`` a returned class is ``g(x)`` and ``g`` is constant within the radius.
* :func:`predict` (PREDICT): ``n`` samples, the top two counts ``n_A``, ``n_B``; it returns ``ĉ_A``
  if the two-sided binomial test of ``n_A`` among ``n_A + n_B`` against ½ has ``p ≤ α``
  (``scipy.stats.binomtest``), else abstains; it returns a class other than ``g(x)`` with
  probability at most ``α``.

Noise is added in [0, 1] pixel space (the model normalises inside) and is **not** clipped, as in the
paper. The radius is in the same units: the L2 norm over every pixel and channel of an image in
[0, 1]. Sampling is batched across inputs: ``batch_size`` noisy copies per forward pass, taken from
consecutive (input, sample) pairs, so small images fill the batch; it runs where the inputs are
(the GPU when they are on one), on a fast copy of the model (conv → batch norm folded, channels
last: :func:`medrobust.attacks.base.fast_copy`, the same function). ``seed`` seeds a local
generator: the same seed and batch size give the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medrobust.attacks.base import eval_mode, fast_copy

#: the class returned for an abstention
ABSTAIN = -1


def _generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(int(seed))


@torch.no_grad()
def sample_counts(model: nn.Module, x: torch.Tensor, sigma: float, n: int, batch_size: int = 1000,
                  generator: torch.Generator | None = None, num_classes: int | None = None) -> torch.Tensor:
    """How often the base classifier predicts each class on ``n`` noisy copies of each input.

    Args:
        model: the base classifier (logits from [0, 1] inputs), in eval mode.
        x: ``(N, ...)`` inputs.
        sigma: the noise's standard deviation, in [0, 1] pixel units (> 0).
        n: noisy copies per input (>= 1).
        batch_size: noisy copies per forward pass.
        generator: the noise's generator (on ``x``'s device); None uses the global RNG.
        num_classes: the number of classes; None reads it from the first forward pass.

    Returns:
        ``(N, C)`` int64 counts, each row summing to ``n``.

    Raises:
        ValueError: ``sigma <= 0``, ``n < 1`` or ``batch_size < 1``.
    """
    if not sigma > 0 or n < 1 or batch_size < 1:
        raise ValueError(f"sigma must be > 0 and n, batch_size >= 1 (got sigma={sigma}, n={n}, batch_size={batch_size})")
    total, counts = len(x) * n, None
    if num_classes is not None:
        counts = torch.zeros(len(x), num_classes, dtype=torch.long, device=x.device)
    for start in range(0, total, batch_size):
        rows = torch.arange(start, min(start + batch_size, total), device=x.device) // n
        noisy = x[rows] + sigma * torch.randn((len(rows), *x.shape[1:]), generator=generator, device=x.device,
                                              dtype=x.dtype)
        logits = model(noisy)
        pred = logits.argmax(1)
        if counts is None:
            counts = torch.zeros(len(x), logits.shape[1], dtype=torch.long, device=x.device)
        counts.index_put_((rows, pred), torch.ones_like(pred), accumulate=True)
    assert counts is not None
    return counts


def lower_confidence_bound(n_a: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """The one-sided ``1 - alpha`` Clopper–Pearson lower bound of a binomial proportion ``n_a / n``.

    Args:
        n_a: successes (an array or one count).
        n: trials.
        alpha: the bound fails with probability at most ``alpha``.

    Returns:
        The bounds (0 where ``n_a == 0``).
    """
    from scipy.stats import beta

    n_a = np.asarray(n_a, dtype=float)
    bound = beta.ppf(alpha, np.maximum(n_a, 1), n - n_a + 1)
    return np.where(n_a > 0, bound, 0.0)


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer per input: the class (``-1``: abstained), the radius and the evidence.

    Attributes:
        prediction: ``(N,)`` int64, ``ĉ_A`` or :data:`ABSTAIN`.
        radius: ``(N,)`` float64, ``σ·Φ⁻¹(p̲_A)`` in L2 pixel units (0 where abstained).
        p_lower: ``(N,)`` float64, ``p̲_A``.
        counts: ``(N,)`` int64, ``n_A`` among the ``n`` samples.
        sigma: the noise level certified.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: np.ndarray
    counts: np.ndarray
    sigma: float


def certify_all(model: nn.Module, x: torch.Tensor, sigma: float, n0: int = 100, n: int = 10_000,
                alpha: float = 0.001, batch_size: int = 1000, seed: int | None = None) -> Certificate:
    """CERTIFY on every input (see the module docstring), with its evidence.

    Args:
        model: the base classifier (logits from [0, 1] inputs); left untouched.
        x: ``(N, ...)`` inputs in [0, 1].
        sigma: the noise level σ (> 0), in [0, 1] pixel units.
        n0: samples that select the class.
        n: samples that estimate its probability.
        alpha: the certificate fails with probability at most ``alpha``, in (0, 1).
        batch_size: noisy copies per forward pass.
        seed: seeds the noise; None uses the global RNG.

    Returns:
        The :class:`Certificate`.

    Raises:
        ValueError: ``alpha`` outside (0, 1), or a bad ``sigma``, ``n0``, ``n`` or ``batch_size``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy.stats import norm

    x = x.detach()
    g = _generator(x.device, seed)
    with eval_mode(model):
        fast = fast_copy(model, x[:8]) if len(x) else model
        with eval_mode(fast):
            selection = sample_counts(fast, x, sigma, n0, batch_size, g)
            estimation = sample_counts(fast, x, sigma, n, batch_size, g, num_classes=selection.shape[1])
    c_a = selection.argmax(1)
    n_a = estimation.gather(1, c_a.view(-1, 1)).squeeze(1).cpu().numpy()
    p_lower = lower_confidence_bound(n_a, n, alpha)
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    prediction = torch.where(torch.as_tensor(certified, device=c_a.device), c_a, torch.full_like(c_a, ABSTAIN))
    return Certificate(prediction.cpu(), torch.as_tensor(radius, dtype=torch.float64), p_lower, n_a, float(sigma))


def certify(model: nn.Module, x: torch.Tensor, sigma: float, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
            batch_size: int = 1000, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY: ``(prediction, radius)`` per input; prediction ``-1`` and radius 0 where it abstains.

    Args and raises as :func:`certify_all`.

    Example:
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> _ = model.weight.data.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        >>> pred, radius = certify(model, torch.tensor([[0.5, 0.0]]), sigma=0.25, n=1000, seed=0)
        >>> int(pred[0]), 0.3 < float(radius[0]) < 0.5  # the exact radius is 0.5
        (0, True)
    """
    cert = certify_all(model, x, sigma, n0, n, alpha, batch_size, seed)
    return cert.prediction, cert.radius


def predict(model: nn.Module, x: torch.Tensor, sigma: float, n: int = 10_000, alpha: float = 0.001,
            batch_size: int = 1000, seed: int | None = None) -> torch.Tensor:
    """PREDICT: the smoothed classifier's class per input, or ``-1`` where the binomial test abstains.

    Args:
        model: the base classifier; left untouched.
        x: ``(N, ...)`` inputs in [0, 1].
        sigma: the noise level σ (> 0).
        n: noisy samples per input.
        alpha: a returned class is wrong with probability at most ``alpha``.
        batch_size: noisy copies per forward pass.
        seed: seeds the noise; None uses the global RNG.

    Returns:
        ``(N,)`` int64 classes (CPU).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy.stats import binomtest

    x = x.detach()
    with eval_mode(model):
        fast = fast_copy(model, x[:8]) if len(x) else model
        with eval_mode(fast):
            counts = sample_counts(fast, x, sigma, n, batch_size, _generator(x.device, seed)).cpu()
    top = counts.topk(min(2, counts.shape[1]), dim=1)
    out = torch.full((len(x),), ABSTAIN, dtype=torch.long)
    for i in range(len(x)):
        n_a = int(top.values[i, 0])
        n_b = int(top.values[i, 1]) if top.values.shape[1] > 1 else 0
        if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
            out[i] = int(top.indices[i, 0])
    return out


__all__ = ["ABSTAIN", "Certificate", "certify", "certify_all", "lower_confidence_bound", "predict", "sample_counts"]
