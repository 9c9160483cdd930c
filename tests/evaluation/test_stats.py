"""The intervals are honest: Wilson's coverage by simulation, and the bootstrap resamples patients."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.evaluation.stats import cluster_bootstrap, proportion, resample_weights


@pytest.mark.parametrize(("n", "p"), [(30, 0.5), (96, 0.83), (96, 0.97), (200, 0.1)])
def test_wilson_interval_covers_the_true_proportion_at_the_nominal_rate(n, p):
    rng = np.random.default_rng(1)
    draws = rng.binomial(n, p, size=800)
    covered = sum(proportion(int(k), n)["ci"][0] <= p <= proportion(int(k), n)["ci"][1] for k in draws)
    assert covered / len(draws) >= 0.93, covered / len(draws)


def test_proportion_value_interval_and_count():
    est = proportion(80, 96)
    assert est["value"] == pytest.approx(80 / 96) and est["n"] == 96
    assert est["ci"][0] < est["value"] < est["ci"][1]
    assert proportion(0, 0) == {"value": None, "ci": [None, None], "n": 0, "ci_low": None, "ci_high": None}
    assert proportion(0, 10)["ci"][0] == 0.0 and proportion(10, 10)["ci"][1] == pytest.approx(1.0)


def test_resampling_draws_whole_patients():
    groups = np.repeat(np.arange(10).astype(str), 3)
    w = resample_weights(groups, 50, seed=0)
    assert w.shape == (50, 30) and np.allclose(w.sum(1), 30)  # G patients of 3 images drawn each time
    assert np.all(w.reshape(50, 10, 3) == w.reshape(50, 10, 3)[:, :, :1])  # a patient's images move together
    assert np.array_equal(w, resample_weights(groups, 50, seed=0))


def test_patient_bootstrap_is_wider_than_an_image_bootstrap_when_images_of_a_patient_agree():
    rng = np.random.default_rng(3)
    patients = 40
    correct = np.repeat(rng.random(patients) < 0.8, 2).astype(float)  # two images per patient, same outcome
    groups = np.repeat(np.arange(patients).astype(str), 2)

    def accuracy(w):
        return w @ correct / w.sum(1)

    by_patient = cluster_bootstrap(accuracy, groups, n_resamples=2000, seed=0)
    by_image = cluster_bootstrap(accuracy, np.arange(2 * patients).astype(str), n_resamples=2000, seed=0)
    width = lambda e: e["ci"][1] - e["ci"][0]  # noqa: E731
    assert by_patient["value"] == by_image["value"] == pytest.approx(correct.mean())
    assert width(by_patient) > 1.25 * width(by_image), (width(by_patient), width(by_image))
