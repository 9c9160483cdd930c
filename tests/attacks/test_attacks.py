"""Every registered attack honours the contract (budget, range, mode, parameters, determinism)."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import ATTACKS, eval_mode, get_attack
from medrobust.models import accuracy

EPS = 8 / 255


FAST = {"steps": 5, "n_queries": 60}  # small budgets: the contract, not the strength, is tested here


def _kwargs(name: str, norm: str) -> dict:
    from medrobust.attacks import attack_params

    kw = {"eps": EPS if norm == "linf" else 0.5, "norm": norm, "seed": 3}
    allowed = attack_params(name)
    kw.update({k: v for k, v in FAST.items() if k in allowed})
    return kw


CASES = [(name, norm) for name, cls in sorted(ATTACKS.items()) for norm in cls.norms]


def test_registry_has_every_required_attack():
    required = {"fgsm", "bim", "pgd", "pgdl2", "mifgsm", "cw", "apgd_ce", "apgd_dlr", "apgd_margin", "square",
                "autoattack"}
    assert required <= set(ATTACKS)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_attack_contract(trained, name, norm):
    model, x, y = trained
    if name == "apgd_dlr":  # DLR needs >= 3 classes: contract-test it on a 3-class head
        model = _three_class(model)
        y = y.clone()
        y[::3] = 2
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
    # run(): the evaluation path agrees on which points it fooled, within the budget too
    x_run, fooled = get_attack(name, model, **kw).run(x, y, early_stop=True)
    assert x_run.min() >= 0 and x_run.max() <= 1
    with torch.no_grad(), eval_mode(model):
        pred = model(x_run).argmax(1)
    assert torch.equal(fooled, pred != y)
    model.eval()


def _three_class(model: torch.nn.Module) -> torch.nn.Module:
    """The binary model with a third, weaker logit appended (still differentiable)."""

    class ThreeClass(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            return torch.cat([z, z.mean(1, keepdim=True) - 1.0], dim=1)

    return ThreeClass(model)


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


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "pgdl2", "mifgsm", "cw", "square"])
def test_targeted_mode_reaches_the_target(trained, name):
    model, x, y = trained
    target = 1 - y  # binary: the other class
    kw = {"eps": 16 / 255 if name not in ("pgdl2", "cw") else 2.0, "targeted": True}
    if name in ("bim", "pgd", "pgdl2", "mifgsm", "cw"):
        kw["steps"] = 20
    if name == "square":
        kw.update(n_queries=300, seed=0)
    adv = get_attack(name, model, **kw)(x, target)
    with torch.no_grad(), eval_mode(model):
        hit = (model(adv).argmax(1) == target).float().mean().item()
        before = (model(x).argmax(1) == target).float().mean().item()
    assert before == 0.0 and hit >= 0.5, f"{name}: {hit:.2f} of points reach their target"
