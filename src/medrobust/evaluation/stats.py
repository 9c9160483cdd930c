"""Confidence intervals: Wilson intervals for proportions, a patient-clustered bootstrap for the rest.

Every figure the evaluation reports is an :func:`estimate` — ``{"value": v, "ci": [lo, hi], "n": n}``
— so ``metrics.json`` and the reports always carry the uncertainty and the number of images it
rests on. The bounds are repeated as the scalars ``ci_low`` and ``ci_high``: ``dvc metrics show``,
``dvc exp show`` and ``dvc metrics diff`` list numbers only and drop lists.

* A **proportion** (accuracy, sensitivity, PPV, attack success rate ...) of ``k`` successes in ``n``
  trials gets the Wilson score interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``),
  which keeps its coverage near the nominal level for small ``n`` and proportions near 0 or 1, where
  the normal approximation fails.
* Any other statistic (ROC/PR AUC, Brier score, ECE, balanced accuracy, a mean over severities) gets
  a percentile bootstrap that resamples **patients**, not images (:func:`cluster_bootstrap`): images of
  one patient are correlated, and an image-level bootstrap would make the interval too narrow. A
  resample is a vector of per-image weights (how often the image's patient was drawn), so every
  statistic takes ``sample_weight`` (scikit-learn's) or weights (ours) and nothing is copied.

Example:
    >>> proportion(80, 96)
    {'value': 0.8333333333333334, 'ci': [0.7462900984810509, 0.8947261762804987], 'n': 96, \
'ci_low': 0.7462900984810509, 'ci_high': 0.8947261762804987}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from medrobust.config import Seed, StrictModel

#: ``{"value": v, "ci": [lo, hi], "n": n, "ci_low": lo, "ci_high": hi}``; ``None`` where undefined (no positives,
#: one class...)
Estimate = dict[str, Any]


class IntervalConfig(StrictModel):
    """``evaluate.intervals``: the confidence level and the patient-clustered bootstrap."""

    level: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(200, ge=20, le=100_000)  # raise (e.g. 2000) for a final report
    bootstrap_seed: Seed = 0


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def estimate(value: float | None, ci: Sequence[float | None] = (None, None), n: int | None = None) -> Estimate:
    """One reported figure: its value, its confidence interval and the number of images behind it.

    Args:
        value: the point estimate (NaN or None: undefined).
        ci: (low, high).
        n: the images (or trials) it rests on.

    Returns:
        ``{"value": v, "ci": [lo, hi], "n": n, "ci_low": lo, "ci_high": hi}`` with NaN replaced by None
        (JSON has no NaN); ``ci_low``/``ci_high`` repeat the bounds for DVC, which drops lists.
    """
    lo, hi = _clean(ci[0]), _clean(ci[1])
    return {"value": _clean(value), "ci": [lo, hi], "n": None if n is None else int(n), "ci_low": lo, "ci_high": hi}


def proportion(k: int, n: int, level: float = 0.95) -> Estimate:
    """``k`` of ``n`` with its Wilson score interval.

    Args:
        k: successes.
        n: trials; 0 gives an undefined estimate.
        level: the confidence level.

    Returns:
        The :func:`estimate` ``k / n``.
    """
    if n <= 0:
        return estimate(None, n=0)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return estimate(k / n, (ci.low, ci.high), n)


def group_codes(groups: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """(index of each image's group in ``0 .. G-1``, G)."""
    _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return codes, int(codes.max()) + 1 if len(codes) else 0


def resample_weights(groups: Sequence[Any] | np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``[R, N]`` per-image weights of ``R`` patient-clustered bootstrap resamples.

    Each resample draws G patients with replacement from the G patients; an image's weight is how
    many times its patient was drawn.

    Args:
        groups: the patient (pseudonym) of each of the N images.
        n_resamples: R.
        seed: seeds a NumPy generator.
    """
    codes, n_groups = group_codes(groups)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, max(n_groups, 1), size=(n_resamples, n_groups))
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.arange(n_resamples)[:, None], drawn), 1.0)
    return counts[:, codes]


@dataclass(frozen=True)
class Bootstrap:
    """Patient-clustered bootstrap resamples of one test set, shared by every statistic on it.

    Args:
        weights: ``[R, N]`` per-image weights (:func:`resample_weights`).
        level: the confidence level of the percentile intervals.
    """

    weights: np.ndarray
    level: float = 0.95

    @classmethod
    def of(cls, groups: Sequence[Any] | np.ndarray, cfg: IntervalConfig) -> Bootstrap:
        """The resamples for images grouped by ``groups`` (patients), as ``cfg`` says.

        Args:
            groups: ``[N]`` the patient of each image.
            cfg: ``evaluate.intervals`` (level, resamples, seed).

        Returns:
            The bootstrap.
        """
        return cls(resample_weights(groups, cfg.bootstrap_resamples, cfg.bootstrap_seed), cfg.level)

    def subset(self, mask: np.ndarray) -> Bootstrap:
        """The same resamples restricted to the images where ``mask`` is True (a slice, a class)."""
        return Bootstrap(self.weights[:, np.asarray(mask, dtype=bool)], self.level)

    def interval(self, values: np.ndarray) -> tuple[float | None, float | None]:
        """Percentile interval of a statistic's values over the resamples (NaN: undefined, skipped).

        Args:
            values: ``[R]``, the statistic on each resample.

        Returns:
            (low, high), or (None, None) when fewer than half the resamples are defined.
        """
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) < len(self.weights) / 2:
            return None, None
        alpha = (1.0 - self.level) / 2
        lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
        return float(lo), float(hi)

    def estimate(self, value: float | None, stat: Callable[[np.ndarray], np.ndarray], n: int) -> Estimate:
        """``value`` (the statistic on the whole sample) with the interval of ``stat`` over the resamples.

        Args:
            value: the point estimate.
            stat: the statistic of weighted samples, ``[R, N]`` weights -> ``[R]`` values.
            n: the images it rests on.
        """
        if value is None or not math.isfinite(value):
            return estimate(None, n=n)
        return estimate(value, self.interval(stat(self.weights)), n)


def cluster_bootstrap(stat: Callable[[np.ndarray], np.ndarray], groups: Sequence[Any] | np.ndarray,
                      n_resamples: int = 200, seed: int = 0, level: float = 0.95) -> Estimate:
    """``stat`` with a percentile interval from resampling the groups (patients) with replacement.

    Args:
        stat: the statistic of weighted samples: ``[R, N]`` per-image weights -> ``[R]`` values
            (all ones: the sample itself).
        groups: the patient of each image.
        n_resamples: bootstrap resamples.
        seed: the resampling seed.
        level: the confidence level.

    Returns:
        The :func:`estimate`.

    Example:
        >>> y = np.array([0.0, 1.0, 1.0, 0.0]); patients = ["a", "a", "b", "b"]
        >>> cluster_bootstrap(lambda w: w @ y / w.sum(1), patients)["value"]
        0.5
    """
    boot = Bootstrap(resample_weights(groups, n_resamples, seed), level)
    value = float(stat(np.ones((1, len(groups))))[0])
    return boot.estimate(value, stat, len(groups))


__all__ = ["Bootstrap", "Estimate", "IntervalConfig", "cluster_bootstrap", "estimate", "group_codes",
           "proportion", "resample_weights"]
