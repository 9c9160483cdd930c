"""Temperature scaling and the operating point: fitted on validation, never changing the argmax."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.evaluation.calibration import OperatingPointConfig, calibrate, choose_threshold, nll, softmax
from medrobust.models import predict_logits
from tests.conftest import toy_task


def test_temperature_scaling_keeps_the_argmax_and_lowers_validation_nll(trained):
    model, x_test, y_test = trained
    x_val, y_val = toy_task(n=96, seed=11)
    val_logits, test_logits = predict_logits(model, x_val).numpy(), predict_logits(model, x_test).numpy()
    cal = calibrate(val_logits, y_val.numpy(), OperatingPointConfig())
    assert cal.temperature > 0 and cal.temperature != pytest.approx(1.0)
    assert cal.val_nll_after < cal.val_nll_before
    assert nll(val_logits, y_val.numpy(), cal.temperature) == pytest.approx(cal.val_nll_after)
    # on the test split: probabilities change, decisions do not, so robustness is unaffected
    np.testing.assert_array_equal(cal.probabilities(test_logits).argmax(1), test_logits.argmax(1))
    assert not np.allclose(cal.probabilities(test_logits), softmax(test_logits))


def test_youden_and_target_sensitivity_thresholds():
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    positive = np.array([0, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    youden = choose_threshold(p, positive, OperatingPointConfig(rule="youden"))
    j = lambda t: ((p >= t) & positive).sum() / 4 - ((p >= t) & ~positive).sum() / 4  # noqa: E731
    assert j(youden) == max(j(t) for t in p)
    sens = choose_threshold(p, positive, OperatingPointConfig(rule="sensitivity", target_sensitivity=1.0))
    assert sens == 0.35 and ((p >= sens) & positive).sum() == 4  # the highest threshold missing no finding
    assert choose_threshold(p, np.ones(8, dtype=bool), OperatingPointConfig()) == 0.5
