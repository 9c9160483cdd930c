"""Every clinical metric against its scikit-learn definition on fixed arrays, with and without
bootstrap weights; the ECE against a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, brier_score_loss, confusion_matrix,
                             roc_auc_score)

from medrobust.evaluation.clinical import (clinical_metrics, ece_bins, weighted_auc, weighted_average_precision,
                                           weighted_balanced_accuracy, weighted_brier, weighted_ece)
from medrobust.evaluation.stats import Bootstrap, IntervalConfig

RNG = np.random.default_rng(0)
N = 80
Y = RNG.integers(0, 2, N)
SCORE = np.round(np.clip(0.35 * Y + RNG.random(N) * 0.65, 0, 1), 1)  # rounded: ties on purpose
PROBS = np.stack([1 - SCORE, SCORE], 1)
WEIGHTS = RNG.integers(0, 3, (5, N)).astype(float)


@pytest.mark.parametrize("row", range(len(WEIGHTS)))
def test_weighted_binary_statistics_equal_scikit_learn_with_sample_weight(row):
    w = WEIGHTS[row]
    assert weighted_auc(SCORE, Y == 1, WEIGHTS)[row] == pytest.approx(roc_auc_score(Y, SCORE, sample_weight=w), abs=1e-12)
    assert weighted_average_precision(SCORE, Y == 1, WEIGHTS)[row] == pytest.approx(
        average_precision_score(Y, SCORE, sample_weight=w), abs=1e-12)
    assert weighted_brier(PROBS, Y, WEIGHTS)[row] == pytest.approx(brier_score_loss(Y, SCORE, sample_weight=w), abs=1e-12)
    pred = (SCORE >= 0.5).astype(int)
    assert weighted_balanced_accuracy(pred, Y, WEIGHTS, 2)[row] == pytest.approx(
        balanced_accuracy_score(Y, pred, sample_weight=w), abs=1e-12)


def test_weighted_multiclass_statistics_equal_scikit_learn():
    y = RNG.integers(0, 3, 60)
    probs = RNG.dirichlet([1, 1, 1], 60)
    w = np.ones((1, 60))
    assert weighted_brier(probs, y, w)[0] == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2]), abs=1e-12)
    macro = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(3)])
    m = clinical_metrics(y, probs, Bootstrap(w), classes=("a", "b", "c"))
    assert m["roc_auc"]["value"] == pytest.approx(macro) == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    recall_b = confusion_matrix(y == 1, probs.argmax(1) == 1)[1, 1] / (y == 1).sum()
    assert m["per_class"]["b"]["sensitivity"]["value"] == pytest.approx(recall_b)


def test_ece_equals_a_hand_computed_case():
    # confidences 0.95, 0.95 (one right, one wrong) in bin 14; 0.6 (right) in bin 8; 0.55 (wrong) in bin 8
    probs = np.array([[0.05, 0.95], [0.95, 0.05], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([1, 1, 0, 0])
    assert list(ece_bins(probs.max(1))) == [14, 14, 8, 8]
    # bin 14: |1/2 − 0.95| · 2/4 ; bin 8: |1/2 − 0.575| · 2/4
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(0.5 - 0.575)
    assert weighted_ece(probs, y, np.ones((1, 4)))[0] == pytest.approx(expected)
    assert ece_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0])).tolist() == [0, 0, 1, 14]


def test_clinical_metrics_at_the_operating_point_match_the_confusion_matrix():
    boot = Bootstrap.of(np.arange(N).astype(str), IntervalConfig(bootstrap_resamples=50))
    m = clinical_metrics(Y, PROBS, boot, threshold=0.6)
    pred = SCORE >= 0.6
    tn, fp, fn, tp = confusion_matrix(Y, pred).ravel()
    assert m["sensitivity"]["value"] == pytest.approx(tp / (tp + fn)) and m["sensitivity"]["n"] == tp + fn
    assert m["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"]["value"] == pytest.approx(tp / (tp + fp)) and m["npv"]["value"] == pytest.approx(tn / (tn + fn))
    assert m["accuracy"]["value"] == pytest.approx((PROBS.argmax(1) == Y).mean())  # accuracy is the argmax's
    assert m["roc_auc"]["value"] == pytest.approx(roc_auc_score(Y, SCORE))
    assert m["pr_auc"]["value"] == pytest.approx(average_precision_score(Y, SCORE))
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(Y, SCORE))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(Y, pred))
    for name, est in m.items():
        lo, hi = est["ci"]
        assert lo <= est["value"] <= hi, name  # every figure with an interval around it
