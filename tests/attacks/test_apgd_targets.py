"""APGD-T's targets as rows of one batch, points leaving every loop once fooled, and the folded
copy of the model the AutoAttack members attack: each saves time and changes no result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks import get_attack
from medrobust.attacks.base import fast_copy
from medrobust.bench.autoattack import digits, train_cnn
from medrobust.evaluation.metrics import evaluate_attack

EPS = 0.1


@pytest.fixture(scope="module")
def ten_classes():
    """The digits benchmark's small CNN (10 classes), briefly trained, and 120 test images."""
    x_train, y_train, x, y = digits(120, seed=0)
    return train_cnn(x_train, y_train, seed=0, epochs=4), x, y


def test_targets_in_one_batch_equal_targets_one_by_one(ten_classes):
    model, x, y = ten_classes
    kw = {"eps": EPS, "steps": 20, "targeted": True, "seed": 3}
    batched = get_attack("apgd_dlr", model, **kw)
    one_by_one = get_attack("apgd_dlr", model, max_rows=1, **kw)  # one target per chunk
    assert batched._targets_per_chunk(x, len(x), 9) == 9 and one_by_one._targets_per_chunk(x, len(x), 9) == 1
    adv_b, fooled_b = batched.run(x, y)
    adv_s, fooled_s = one_by_one.run(x, y)
    assert torch.equal(fooled_b, fooled_s)
    assert 0.2 < fooled_b.float().mean() < 1  # a non-trivial comparison
    with torch.no_grad():
        assert torch.equal(model(adv_b[fooled_b]).argmax(1) != y[fooled_b], torch.ones_like(y[fooled_b], dtype=bool))
    assert (adv_b - x).abs().max() <= EPS + 1e-6


def test_a_point_leaves_the_loop_the_step_it_is_fooled(ten_classes):
    model, x, y = ten_classes
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            calls.append(len(z))
            return self.inner(z)

    steps = 30
    attack = get_attack("apgd_dlr", Counting(), eps=EPS, steps=steps, targeted=True, seed=0)
    _, fooled = attack.run(x, y)
    n_correct = int((model(x).argmax(1) == y).sum())
    robust = n_correct - int((fooled & (model(x).argmax(1) == y)).sum())
    rows = sum(calls)
    # every robust point runs 9 targets for every step; the fooled ones stop early, so far fewer rows
    assert rows >= 9 * robust * steps
    assert rows < 9 * n_correct * (steps + 1) * 0.9


def test_the_fast_copy_is_the_same_function_folded_and_channels_last_and_leaves_the_model_alone(ten_classes):
    model, x, _ = ten_classes
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fast_copy(model, x)
    assert fast is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_an_untraceable_model_keeps_its_batch_norms_and_a_conv_free_one_is_attacked_as_it_is(ten_classes):
    model, x, _ = ten_classes

    class DataDependent(nn.Module):  # torch.fx cannot trace control flow on a tensor's value
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            return self.inner(z) if z.sum() > 0 else -self.inner(z)

    untraceable = DataDependent()
    fast = fast_copy(untraceable, x)
    assert fast is not untraceable  # not folded, but channels-last
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == n_bn
    with torch.no_grad():
        assert torch.allclose(fast(x), untraceable(x), atol=1e-4)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert fast_copy(plain, x) is plain


def test_autoattack_on_ten_classes_decides_on_the_original_model_and_early_stop_changes_nothing(ten_classes):
    model, x, y = ten_classes
    kw = {"eps": EPS, "steps": 10, "n_queries": 50, "seed": 1}
    fast = evaluate_attack(model, get_attack("autoattack", model, **kw), x, y, early_stop=True)
    slow = evaluate_attack(model, get_attack("autoattack", model, **kw), x, y, early_stop=False)
    assert torch.equal(fast.robust, slow.robust)
    assert fast.accuracy < float((model(x).argmax(1) == y).float().mean())
    pgd = evaluate_attack(model, get_attack("pgd", model, eps=EPS, steps=10, seed=0), x, y)
    assert fast.accuracy <= pgd.accuracy
