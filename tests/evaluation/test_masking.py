"""The gradient-masking checks flag deliberately masked models and pass a normal one."""

from __future__ import annotations

import torch
from torch import nn

from medrobust.evaluation.masking import MaskingConfig
from medrobust.evaluation.masking import run_masking_checks
from medrobust.evaluation.metrics import evaluate_attack
from medrobust.attacks import get_attack

CFG = MaskingConfig(n_points=64, square_queries=200)
EPS = 8 / 255
LABEL = "8/255"


class Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


class Quantised(nn.Module):
    """A non-differentiable input quantiser in front of the model (gradient is zero almost everywhere)."""

    def __init__(self, inner: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


def _whitebox(model, x, y):
    out = {}
    for eps, label in ((2 / 255, "2/255"), (4 / 255, "4/255"), (EPS, LABEL)):
        out[label] = evaluate_attack(model, get_attack("pgd", model, eps=eps, steps=10, seed=0), x, y).accuracy
    return {"pgd_linf": out}


def _checks(model, x, y):
    return {c.name: c for c in run_masking_checks(model, x, y, _whitebox(model, x, y), CFG, EPS, LABEL)}


def test_normal_model_passes_every_check(trained):
    model, x, y = trained
    checks = _checks(model, x, y)
    assert set(checks) == {"deterministic_outputs", "logits_not_probabilities", "nonzero_input_gradients",
                           "whitebox_beats_blackbox", "accuracy_falls_with_eps", "large_eps_breaks_model"}
    assert all(c.passed for c in checks.values()), {n: c.message for n, c in checks.items() if not c.passed}


def test_softmax_output_is_flagged(trained):
    model, x, y = trained
    checks = _checks(Softmaxed(model), x, y)
    assert not checks["logits_not_probabilities"].passed
    assert "softmax" in checks["logits_not_probabilities"].message


def test_input_quantiser_is_flagged(trained):
    model, x, y = trained
    checks = _checks(Quantised(model), x, y)
    assert not checks["nonzero_input_gradients"].passed
    assert not checks["large_eps_breaks_model"].passed
    failed = {n for n, c in checks.items() if not c.passed}
    assert failed >= {"nonzero_input_gradients", "large_eps_breaks_model"}


def test_random_model_is_flagged(trained):
    model, x, y = trained

    class Noisy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x + 0.05 * torch.randn_like(x))

    assert not _checks(Noisy(model), x, y)["deterministic_outputs"].passed


def test_non_monotone_curve_is_flagged():
    from medrobust.evaluation.masking import check_monotone

    res = check_monotone({"pgd_linf": {"2/255": 0.5, "4/255": 0.6, "8/255": 0.4}}, tol=0.03)
    assert not res.passed and "pgd_linf" in res.message and res.value == 0.1 or abs(res.value - 0.1) < 1e-9
