"""The worst case over the suite counts a point only if every attack left it robust."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.attacks.spec import AttackSpec
from medrobust.evaluation import conditions as cond


def _condition(logits, robust, clean_correct):
    return cond.Condition(np.array(logits, dtype=float), np.array(robust), np.array(clean_correct))


def test_worst_case_on_a_hand_made_fixture():
    y = np.array([0, 0, 1, 1])
    clean_correct = [True, True, True, False]
    a = _condition([[2, 0], [-1, 1], [0, 3], [1, 0]], [True, False, True, False], clean_correct)
    b = _condition([[0.5, 0], [3, 0], [1, 0], [1, 0]], [True, True, False, False], clean_correct)
    wc = cond.worst_case([a, b], y)
    assert wc.robust.tolist() == [True, False, False, False]  # point 1 fooled by a, point 2 by b
    assert wc.robust.mean() == 0.25
    np.testing.assert_array_equal(wc.logits, [[0.5, 0], [-1, 1], [1, 0], [1, 0]])  # lowest true-class probability
    assert (wc.logits.argmax(1) == y).tolist() == wc.robust.tolist()


@pytest.mark.integration
def test_worst_case_is_at_most_every_attack_point_by_point(trained):
    model, x, y = trained
    specs = [AttackSpec(name="fgsm", eps=(4 / 255,)), AttackSpec(name="pgd", eps=(4 / 255,), steps=5),
             AttackSpec(name="square", eps=(4 / 255,), n_queries=30)]
    runs = [cond.attacked(model, s, 4 / 255, x, y, 32, True, seed=0) for s in specs]
    wc = cond.worst_case(runs, y.numpy())
    for run in runs:
        assert np.all(wc.robust <= run.robust)  # never robust where one attack fooled the point
        assert wc.robust.mean() <= run.robust.mean()
    assert np.array_equal(wc.robust, np.logical_and.reduce([r.robust for r in runs]))
    assert ((wc.logits.argmax(1) == y.numpy()) == wc.robust).all()
    assert all(((r.logits.argmax(1) == y.numpy()) == r.robust).all() for r in runs)  # robust = correct under attack


def test_a_condition_needs_attacks():
    with pytest.raises(ValueError, match="at least one attack"):
        cond.worst_case([cond.Condition(np.zeros((2, 2)))], np.array([0, 1]))


def test_shifted_uses_the_same_noise_as_the_shifted_images(trained):
    model, x, _ = trained
    logits = cond.shifted(model, x, "gaussian_noise", 3, seed=5, batch_size=16).logits
    images = cond.shifted_images(x, "gaussian_noise", 3, seed=5, batch_size=16)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model.eval()(images).numpy(), atol=1e-5)
