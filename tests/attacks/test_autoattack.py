"""APGD / AutoAttack: at least as strong as PGD, works for 2 classes, early stop changes nothing."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import get_attack
from medrobust.attacks.apgd import checkpoints, per_point_loss
from medrobust.evaluation.metrics import evaluate_attack

EPS = 4 / 255  # a budget where PGD leaves some points robust on the toy model


def test_autoattack_is_at_least_as_strong_as_pgd10_on_two_classes(trained):
    model, x, y = trained
    assert model(x).shape[1] == 2
    pgd = evaluate_attack(model, get_attack("pgd", model, eps=EPS, steps=10, seed=0), x, y).accuracy
    aa = get_attack("autoattack", model, eps=EPS, steps=20, n_queries=200, seed=0)
    res = evaluate_attack(model, aa, x, y)
    assert res.accuracy <= pgd
    assert [c.name for c in aa.components(2)] == ["apgd_ce", "apgd_margin", "square"]
    assert 0 < pgd < 1  # a non-trivial comparison


def test_autoattack_components_by_number_of_classes(trained):
    model, _, _ = trained
    aa = get_attack("autoattack", model, eps=EPS)
    three = [(c.name, c.targeted) for c in aa.components(3)]
    assert three == [("apgd_ce", False), ("apgd_dlr", False), ("apgd_margin", True), ("square", False)]
    ten = aa.components(10)
    assert [(c.name, c.targeted) for c in ten] == [("apgd_ce", False), ("apgd_dlr", True), ("square", False)]
    assert ten[1].n_target_classes == 9 and aa.components(5)[1].n_target_classes == 4
    plus = get_attack("autoattack", model, eps=EPS, targeted_margin=True).components(10)
    assert [(c.name, c.targeted) for c in plus][1:3] == [("apgd_dlr", True), ("apgd_margin", True)]


def test_dlr_refuses_two_classes(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="apgd_margin"):
        get_attack("apgd_dlr", model, eps=EPS)(x, y)


@pytest.mark.parametrize("name", ["pgd", "mifgsm", "apgd_ce", "autoattack"])
def test_early_stop_gives_identical_robust_points(trained, name):
    model, x, y = trained
    kw = {"eps": EPS, "seed": 1}
    if name == "autoattack":
        kw.update(steps=10, n_queries=50)
    fast = evaluate_attack(model, get_attack(name, model, **kw), x, y, early_stop=True)
    slow = evaluate_attack(model, get_attack(name, model, **kw), x, y, early_stop=False)
    assert torch.equal(fast.robust, slow.robust)
    assert fast.attacked <= slow.attacked


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> w = ceil(p * 100)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_losses_on_hand_computed_logits():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([1])
    t = torch.tensor([2])
    assert per_point_loss("margin", z, y, None).item() == pytest.approx(3.0 - 1.0)
    assert per_point_loss("margin", z, y, t).item() == pytest.approx(0.0 - 3.0)
    # DLR: -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)
    assert per_point_loss("dlr", z, y, None).item() == pytest.approx(-(1.0 - 3.0) / (3.0 - 0.0))
    # targeted DLR: -(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2)
    assert per_point_loss("dlr", z, y, t).item() == pytest.approx(-(1.0 - 0.0) / (3.0 - (0.0 - 1.0) / 2))
    ce = torch.nn.functional.cross_entropy(z, y).item()
    assert per_point_loss("ce", z, y, None).item() == pytest.approx(ce)
