"""Every registered attack honours the contract (budget, range, mode, parameters, determinism)."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import ATTACKS, get_attack
from medrobust.defenses import get_defense
from medrobust.models import ModelSpec, build_model
from medrobust.training import accuracy, train_model
from medrobust.data.shards import ArraySplit
from medrobust.config import OptimConfig

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on a toy task (bright square present or not), and a test batch."""
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, 4:10, 4:10] += 0.15
    x = x.clamp(0, 1)
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=8, image_size=16))
    split = ArraySplit(x[:192], y[:192], manifest=None)
    train_model(model, get_defense("standard"), split, None, epochs=15, batch_size=32,
                optim=OptimConfig(lr=3e-3), seed=0)
    return model, x[192:], y[192:]


def _kwargs(name: str, norm: str) -> dict:
    kw = {"eps": EPS if norm == "linf" else 0.5, "norm": norm, "seed": 3}
    if name != "fgsm":
        kw["steps"] = 5
    return kw


CASES = [(name, norm) for name, cls in sorted(ATTACKS.items()) for norm in cls.norms]


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_attack_contract(trained, name, norm):
    model, x, y = trained
    model.train()  # the caller's mode must come back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = None
    kw = _kwargs(name, norm)
    adv = get_attack(name, model, **kw)(x, y)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():  # BN running stats untouched too (eval mode inside)
        assert torch.equal(v, before[k]), k
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= kw["eps"] + 1e-6
    else:
        assert delta.norm(dim=1).max() <= kw["eps"] + 1e-5
    clean = accuracy(model, x, y)
    robust = accuracy(model, adv, y)
    assert robust <= clean
    again = get_attack(name, model, **kw)(x, y)
    assert torch.equal(adv, again)
    model.eval()


def test_pgd_breaks_the_standard_model_and_beats_fgsm(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    fgsm = accuracy(model, get_attack("fgsm", model, eps=EPS)(x, y), y)
    pgd = accuracy(model, get_attack("pgd", model, eps=EPS, steps=10, seed=0)(x, y), y)
    assert clean >= 0.9
    assert pgd <= fgsm + 1e-9 and pgd <= clean - 0.3


def test_zero_eps_returns_inputs(trained):
    model, x, y = trained
    assert torch.equal(get_attack("pgd", model, eps=0.0)(x, y), x)


def test_unknown_attack_lists_available():
    with pytest.raises(KeyError, match="fgsm"):
        get_attack("deepfool", torch.nn.Identity(), eps=0.1)
