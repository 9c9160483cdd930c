"""Square (score-based black box, L∞) and CW (L2) on the toy model of ``tests/conftest.py``.

Measured on this fixture (clean accuracy 1.0): Square at ε=8/255 with 300 queries leaves 0.53-0.56
accuracy over seeds 0-2 (PGD-10: 0.52; Square with a single query, the stripe init only: 0.98);
CW (c=1, κ=0, lr=0.01, 100 steps, ε=inf) fools 64/64 with mean L2 0.33 (max 0.77), and at ε=0.3
leaves accuracy 0.53.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks.cw import CW
from medrobust.attacks.square import Square
from medrobust.models import accuracy

EPS = 8 / 255


class _NoGradGuard(nn.Module):
    """Fails if the wrapped model is ever run with autograd recording (what a gradient needs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("square ran the model with gradients enabled")
        self.calls += 1
        return self.model(x)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x).argmax(1)
    model.train(was)
    return out


def _check_contract_side_effects(model: nn.Module, run) -> torch.Tensor:
    """Run ``run()`` on a model in train mode with no grads; check mode, grads and state come back."""
    model.train()
    for p in model.parameters():
        p.grad = None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        adv = run()
        assert all(m.training for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
    finally:
        model.eval()
    return adv


# -- Square ---------------------------------------------------------------------------------------
def test_square_breaks_the_standard_model(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    robust = accuracy(model, Square(model, EPS, n_queries=300, seed=0)(x, y), y)
    stripes_only = accuracy(model, Square(model, EPS, n_queries=1, seed=0)(x, y), y)
    assert clean >= 0.9
    assert robust <= clean - 0.3  # measured 1.0 -> 0.53..0.56
    assert robust <= stripes_only - 0.2  # the random search, not the init, does the work


def test_square_uses_forward_passes_only(trained):
    model, x, y = trained
    guarded = _NoGradGuard(model)
    with torch.enable_grad():  # even if the caller records gradients
        adv = Square(guarded, EPS, n_queries=50, seed=0)(x, y)
    assert guarded.calls > 0
    assert not adv.requires_grad


def test_square_contract_budget_range_queries_determinism(trained):
    model, x, y = trained
    n_queries = 100
    attack = Square(model, EPS, n_queries=n_queries, seed=5)
    adv = _check_contract_side_effects(model, lambda: attack(x, y))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= EPS + 1e-6
    q = attack.queries_used
    assert q is not None and q.shape == (len(x),) and q.dtype == torch.long
    assert q.min() >= 1 and q.max() <= n_queries
    fooled = _predict(model, adv) != y
    assert fooled.any() and (q[~fooled] == n_queries).all()  # robust images used the whole budget
    again = Square(model, EPS, n_queries=n_queries, seed=5)
    assert torch.equal(again(x, y), adv) and torch.equal(again.queries_used, q)
    assert not torch.equal(Square(model, EPS, n_queries=n_queries, seed=6)(x, y), adv)


def test_square_leaves_misclassified_images_clean(trained):
    model, x, y = trained
    wrong = torch.zeros(len(x), dtype=torch.bool)
    wrong[::4] = True
    labels = torch.where(wrong, 1 - y, y)  # the model is right on y, so wrong on these
    attack = Square(model, EPS, n_queries=50, seed=0)
    adv = attack(x, labels)
    assert torch.equal(adv[wrong], x[wrong])
    assert (attack.queries_used[wrong] == 0).all() and (attack.queries_used[~wrong] >= 1).all()


def test_square_p_schedule_is_rescaled_to_the_budget(trained):
    model, _, _ = trained
    a = Square(model, EPS, n_queries=1000, p_init=0.8)
    assert a.p_selection(0) == 0.8 and a.p_selection(1) == 0.8  # 10 of 10k
    assert a.p_selection(2) == 0.4  # 20 of 10k
    assert a.p_selection(999) == pytest.approx(0.8 / 512)
    with pytest.raises(ValueError, match="norm"):
        Square(model, 0.5, norm="l2")


# -- CW -------------------------------------------------------------------------------------------
def test_cw_finds_small_l2_adversarials(trained):
    model, x, y = trained
    adv = _check_contract_side_effects(model, lambda: CW(model, steps=100)(x, y))
    assert adv.min() >= 0 and adv.max() <= 1
    fooled = _predict(model, adv) != y
    l2 = (adv - x).flatten(1).norm(dim=1)
    assert fooled.float().mean() >= 0.9  # measured 64/64
    assert l2[fooled].mean() <= 0.6  # measured 0.33; well below eps=2.0
    assert (l2[~fooled] == 0).all()  # failures come back clean


def test_cw_small_eps_returns_clean_outside_the_ball(trained):
    model, x, y = trained
    eps = 0.3
    adv = _check_contract_side_effects(model, lambda: CW(model, eps=eps, steps=100)(x, y))
    l2 = (adv - x).flatten(1).norm(dim=1)
    assert l2.max() <= eps + 1e-5
    moved = l2 > 0
    pred = _predict(model, adv)
    assert (pred[moved] != y[moved]).all()  # whatever is returned perturbed is adversarial
    assert (~moved).sum() >= 10 and moved.sum() >= 10  # measured: accuracy 0.53 at eps=0.3
    unlimited = CW(model, steps=100)(x, y)
    assert torch.equal(adv[moved], unlimited[moved])  # same best adversarial, just filtered


def test_cw_works_when_caller_disabled_grad(trained):
    model, x, y = trained
    with torch.no_grad():
        adv = CW(model, steps=30)(x[:16], y[:16])
    assert (adv - x[:16]).abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
