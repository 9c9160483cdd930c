"""Clinical metrics of one set of predictions, each with its confidence interval.

For a **binary** task (class 1 is the positive finding, e.g. ``lesion``) the decision is made at the
operating point chosen on the validation split (:mod:`medrobust.evaluation.calibration`):

* ``accuracy`` — of the argmax (what an attack flips; robust accuracy is this under attack);
* ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``balanced_accuracy`` — at the operating point;
* ``roc_auc``, ``pr_auc`` (average precision), ``brier`` and ``ece`` — of P(positive).

For a **multi-class** task the decision is the argmax and the report gives ``accuracy``,
``balanced_accuracy``, macro ``sensitivity`` / ``specificity`` / ``ppv`` / ``npv``, one-vs-rest macro
``roc_auc`` and ``pr_auc``, the multi-class ``brier`` score and the top-label ``ece``, plus the four
per-class figures under ``per_class``.

The point estimates are scikit-learn's (``confusion_matrix``, ``roc_auc_score``,
``average_precision_score``, ``brier_score_loss``, ``balanced_accuracy_score``). The intervals: Wilson
for the proportions (:func:`~medrobust.evaluation.stats.proportion`) and the patient-clustered bootstrap
for the rest. The bootstrap evaluates the same definitions with per-image weights, vectorised over
all resamples at once (a resample costs microseconds instead of scikit-learn's milliseconds); the
tests check each one against scikit-learn's ``sample_weight`` on fixed arrays.

ECE uses :data:`ECE_BINS` = 15 equal-width bins of the top-label confidence, bin ``b`` holding
confidences in ``(b/15, (b+1)/15]`` (0 in the first), weighted by the bins' shares of the images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medrobust.evaluation.stats import Bootstrap, Estimate, estimate, proportion

#: equal-width confidence bins of the expected calibration error
ECE_BINS = 15


# --------------------------------------------------------------------------------------------------
# weighted statistics, batched over the rows of W ([R, N] per-image weights)
# --------------------------------------------------------------------------------------------------
def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for the ``positive`` images, one value per row of ``weights``.

    The Mann–Whitney form: the weighted share of (positive, negative) pairs ranked correctly, ties
    counting one half — what scikit-learn's trapezoidal AUC with ``sample_weight`` computes.

    Args:
        scores: ``[N]`` scores (higher: more likely positive).
        positive: ``[N]`` booleans.
        weights: ``[R, N]`` weights.

    Returns:
        ``[R]`` AUCs (NaN where a resample lacks positives or negatives).
    """
    positive = np.asarray(positive, dtype=bool)
    s_pos, s_neg = scores[positive], scores[~positive]
    pairs = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    num = np.einsum("rp,pn,rn->r", w_pos, pairs, w_neg)
    den = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (PR AUC as scikit-learn defines it: Σ (Rₖ − Rₖ₋₁) Pₖ over distinct thresholds).

    Args:
        scores: ``[N]`` scores.
        positive: ``[N]`` booleans.
        weights: ``[R, N]`` weights.

    Returns:
        ``[R]`` values (NaN where a resample has no positive).
    """
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], np.asarray(positive, dtype=bool)[order]
    w = weights[:, order]
    tp = np.cumsum(w * pos, axis=1)
    fp = np.cumsum(w * ~pos, axis=1)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last index of each distinct score
    tp, fp = tp[:, last], fp[:, last]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        recall = tp / np.where(total > 0, total, 1)
    gain = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    ap = (gain * precision).sum(1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def weighted_brier(probs: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Brier score: the weighted mean of Σₖ (pₖ − 1[y = k])² (binary: of (p₁ − y)², as scikit-learn).

    Args:
        probs: ``[N, C]`` probabilities.
        y: ``[N]`` classes.
        weights: ``[R, N]`` weights.
    """
    onehot = np.eye(probs.shape[1])[y]
    per = ((probs - onehot) ** 2).sum(1)
    if probs.shape[1] == 2:
        per = per / 2  # (p0 − y0)² + (p1 − y1)² = 2 (p1 − y1)²
    return weights @ per / weights.sum(1)


def ece_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each confidence: ``(b/B, (b+1)/B]`` is bin ``b``; 0 falls in bin 0.

    Args:
        confidence: ``[N]`` top-label probabilities in [0, 1].
        n_bins: ``B``, equal-width bins.

    Returns:
        ``[N]`` bin indices in ``0 .. B-1``.
    """
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def weighted_ece(probs: np.ndarray, y: np.ndarray, weights: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error of the top label: Σ_b (W_b / W) · |accuracy_b − confidence_b|.

    Args:
        probs: ``[N, C]`` probabilities.
        y: ``[N]`` classes.
        weights: ``[R, N]`` weights.
        n_bins: equal-width bins.
    """
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    member = np.eye(n_bins)[ece_bins(conf, n_bins)]  # [N, B]
    gap = np.abs(weights @ (member * correct[:, None]) - weights @ (member * conf[:, None]))
    return gap.sum(1) / weights.sum(1)  # Σ_b |Σ w·correct − Σ w·conf| / W = Σ_b (W_b/W)|acc_b − conf_b|


def weighted_balanced_accuracy(pred: np.ndarray, y: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """The mean over classes of the weighted recall (classes absent from a resample are left out).

    Args:
        pred: ``[N]`` predicted classes.
        y: ``[N]`` true classes.
        weights: ``[R, N]`` per-image weights, one row per resample.
        n_classes: the number of classes.

    Returns:
        ``[R]`` balanced accuracies.
    """
    recalls = []
    for k in range(n_classes):
        of_k = y == k
        total = weights[:, of_k].sum(1)
        hit = weights[:, of_k & (pred == k)].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(total > 0, hit / np.where(total > 0, total, 1), np.nan))
    return np.nanmean(np.stack(recalls, axis=1), axis=1)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of per-image ``values`` (e.g. correctness averaged over shifts).

    Args:
        values: ``[N]`` per-image values.
        weights: ``[R, N]`` per-image weights, one row per resample.

    Returns:
        ``[R]`` means.
    """
    return weights @ values / weights.sum(1)


# --------------------------------------------------------------------------------------------------
# the report of one condition
# --------------------------------------------------------------------------------------------------
def _confusion_rates(y: np.ndarray, pred: np.ndarray, k: int, level: float) -> dict[str, Estimate]:
    from sklearn.metrics import confusion_matrix

    tn, fp, fn, tp = confusion_matrix(y == k, pred == k, labels=[False, True]).ravel()
    return {"sensitivity": proportion(tp, tp + fn, level), "specificity": proportion(tn, tn + fp, level),
            "ppv": proportion(tp, tp + fp, level), "npv": proportion(tn, tn + fn, level)}


def clinical_metrics(y: np.ndarray, probs: np.ndarray, boot: Bootstrap, threshold: float | None = None,
                     classes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every clinical metric of one set of predictions, each an :func:`~medrobust.evaluation.stats.estimate`.

    Args:
        y: ``[N]`` true classes.
        probs: ``[N, C]`` (calibrated) probabilities.
        boot: the patient-clustered resamples of these N images.
        threshold: binary tasks: the operating point on P(class 1); None: the argmax (0.5).
        classes: class names, for ``per_class`` (multi-class tasks).

    Returns:
        ``{metric: estimate}``; multi-class tasks add ``per_class: {class: {metric: estimate}}``.
    """
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, brier_score_loss,
                                 roc_auc_score)

    y = np.asarray(y, dtype=int)
    n, n_classes = len(y), probs.shape[1]
    level = boot.level
    argmax = probs.argmax(1)
    out: dict[str, Any] = {"accuracy": proportion(int((argmax == y).sum()), n, level)}
    two_classes = len(np.unique(y)) > 1
    if n_classes == 2:
        p1 = probs[:, 1]
        pred = (p1 >= (0.5 if threshold is None else threshold)).astype(int)
        out.update(_confusion_rates(y, pred, 1, level))
        out["balanced_accuracy"] = boot.estimate(
            float(balanced_accuracy_score(y, pred)) if two_classes else None,
            lambda w: weighted_balanced_accuracy(pred, y, w, 2), n)
        out["roc_auc"] = boot.estimate(float(roc_auc_score(y, p1)) if two_classes else None,
                                       lambda w: weighted_auc(p1, y == 1, w), n)
        out["pr_auc"] = boot.estimate(float(average_precision_score(y, p1)) if (y == 1).any() else None,
                                      lambda w: weighted_average_precision(p1, y == 1, w), n)
        out["brier"] = boot.estimate(float(brier_score_loss(y, p1)), lambda w: weighted_brier(probs, y, w), n)
    else:
        per_class = {}
        names = classes or tuple(str(k) for k in range(n_classes))
        for k in range(n_classes):
            per_class[names[k]] = _confusion_rates(y, argmax, k, level)
        out["balanced_accuracy"] = boot.estimate(float(balanced_accuracy_score(y, argmax)),
                                                 lambda w: weighted_balanced_accuracy(argmax, y, w, n_classes), n)
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            values = [per_class[c][rate]["value"] for c in names if per_class[c][rate]["value"] is not None]
            out[rate] = estimate(float(np.mean(values)) if values else None, n=n)  # macro; per-class CIs below
        present = [k for k in range(n_classes) if (y == k).any() and (y != k).any()]
        out["roc_auc"] = boot.estimate(
            float(np.mean([roc_auc_score(y == k, probs[:, k]) for k in present])) if present else None,
            lambda w: np.nanmean(np.stack([weighted_auc(probs[:, k], y == k, w) for k in present], 1), 1), n)
        out["pr_auc"] = boot.estimate(
            float(np.mean([average_precision_score(y == k, probs[:, k]) for k in present])) if present else None,
            lambda w: np.nanmean(np.stack([weighted_average_precision(probs[:, k], y == k, w)
                                           for k in present], 1), 1), n)
        out["brier"] = boot.estimate(float(brier_score_loss(y, probs, labels=list(range(n_classes)))),
                                     lambda w: weighted_brier(probs, y, w), n)
        out["per_class"] = per_class
    out["ece"] = boot.estimate(float(weighted_ece(probs, y, np.ones((1, n)))[0]), lambda w: weighted_ece(probs, y, w),
                               n)
    return out


__all__ = ["ECE_BINS", "clinical_metrics", "ece_bins", "weighted_auc", "weighted_average_precision",
           "weighted_balanced_accuracy", "weighted_brier", "weighted_ece", "weighted_mean"]
