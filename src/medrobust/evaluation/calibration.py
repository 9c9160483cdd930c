"""What the model's outputs mean: temperature scaling and the operating point, both fitted on the
validation split and never on test.

* **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
  arXiv 1706.04599): probabilities are ``softmax(logits / T)`` with the ``T > 0`` that minimises the
  validation negative log-likelihood (``scipy.optimize.minimize_scalar`` on ``log T``). Dividing by a
  positive number never changes the argmax, so accuracy and robustness are untouched; only the
  probabilities (ECE, Brier, AUC-free figures) change.
* **The operating point** (binary tasks): the threshold on the calibrated P(positive) at which the
  model says "positive", chosen on the validation split by ``evaluate.operating_point``: ``youden``
  (the threshold maximising sensitivity + specificity − 1, Youden's J) or ``sensitivity`` (the highest
  threshold whose validation sensitivity reaches ``target_sensitivity``, e.g. 0.90: the most specific
  rule that misses at most 10% of findings).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medrobust.config import StrictModel


class OperatingPointConfig(StrictModel):
    """``evaluate.operating_point``: how the binary decision threshold is chosen on the validation split."""

    rule: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0.0, le=1.0)  # for rule: sensitivity


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` row by row, numerically stable.

    Args:
        logits: ``[N, C]`` logits.
        temperature: the divisor (1: plain softmax).

    Returns:
        ``[N, C]`` float64 probabilities.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of the true classes under ``softmax(logits / T)``.

    Args:
        logits: ``[N, C]`` logits.
        y: ``[N]`` true classes.
        temperature: ``T``.

    Returns:
        The mean NLL in nats.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(y)), np.asarray(y, dtype=int)].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the NLL of ``(logits, y)`` (the validation split's).

    Args:
        logits: ``[N, C]`` validation logits.
        y: ``[N]`` validation classes.
        bounds: the search range of T.

    Returns:
        T (1.0 when the validation split is empty).
    """
    if len(y) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: nll(logits, y, math.exp(log_t)),
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded")
    return float(math.exp(res.x))


def choose_threshold(p_positive: np.ndarray, positive: np.ndarray, cfg: OperatingPointConfig) -> float:
    """The decision threshold on P(positive), chosen on validation predictions.

    Args:
        p_positive: ``[N]`` calibrated validation probabilities of the positive class.
        positive: ``[N]`` booleans, the validation truth.
        cfg: the rule.

    Returns:
        The threshold (0.5 when the validation split lacks a class).
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return 0.5
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(positive, p_positive)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if cfg.rule == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    reach = np.flatnonzero(tpr >= cfg.target_sensitivity)
    return float(thresholds[reach[0]])  # thresholds decrease: the first that reaches the target is the highest


@dataclass(frozen=True)
class Calibration:
    """The temperature and the operating point of one model, and what they were fitted on.

    Attributes:
        temperature: T of ``softmax(logits / T)``.
        threshold: the binary decision threshold on calibrated P(positive); None for multi-class tasks.
        rule: how the threshold was chosen (``youden`` or ``sensitivity>=0.9``).
        n_val: the validation images both were fitted on.
        val_nll_before, val_nll_after: the validation NLL at T = 1 and at T.
    """

    temperature: float
    threshold: float | None
    rule: str
    n_val: int
    val_nll_before: float
    val_nll_after: float

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``logits`` (the argmax is unchanged)."""
        return softmax(logits, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``calibration.json``)."""
        return asdict(self)


def calibrate(val_logits: np.ndarray, val_y: np.ndarray, cfg: OperatingPointConfig) -> Calibration:
    """Fit the temperature, then the operating point on the calibrated validation probabilities.

    Args:
        val_logits: ``[N, C]`` validation logits.
        val_y: ``[N]`` validation classes.
        cfg: ``evaluate.operating_point``.

    Returns:
        The calibration.
    """
    val_y = np.asarray(val_y, dtype=int)
    temperature = fit_temperature(val_logits, val_y)
    threshold = None
    rule = "argmax"
    if val_logits.shape[1] == 2:
        threshold = choose_threshold(softmax(val_logits, temperature)[:, 1], val_y == 1, cfg)
        rule = "youden" if cfg.rule == "youden" else f"sensitivity>={cfg.target_sensitivity:g}"
    before = nll(val_logits, val_y) if len(val_y) else float("nan")
    after = nll(val_logits, val_y, temperature) if len(val_y) else float("nan")
    return Calibration(temperature, threshold, rule, len(val_y), before, after)


__all__ = ["Calibration", "OperatingPointConfig", "calibrate", "choose_threshold", "fit_temperature", "nll",
           "softmax"]
