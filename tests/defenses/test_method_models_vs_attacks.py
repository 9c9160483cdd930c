"""Every model a training method builds (dual BN, the RAN head, the assimilation adapter, ...) works with
every registered attack: outputs in [0, 1], inside the ε-ball, the model's mode restored."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import ATTACKS, get_attack
from medrobust.defenses import TRAINING_METHODS
from medrobust.models import ModelSpec, build_model
from tests.attacks.test_attacks import _kwargs

OVERRIDES = sorted({tuple(sorted((k, str(v)) for k, v in cls.model_overrides.items())) for cls in TRAINING_METHODS.values()})


def _model(overrides: tuple) -> torch.nn.Module:
    by_method = next(cls.model_overrides for cls in TRAINING_METHODS.values()
                     if tuple(sorted((k, str(v)) for k, v in cls.model_overrides.items())) == overrides)
    torch.manual_seed(0)
    return build_model(ModelSpec("small_cnn", 3, width=4, **by_method))  # 3 classes: DLR needs them


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: ",".join(k for k, _ in o) or "plain")
def test_every_attack_runs_on_every_method_model(overrides):
    model = _model(overrides)
    assert len(OVERRIDES) >= 4  # plain, dual BN, RAN head, assimilation adapter at least
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    model.train()
    for name, cls in sorted(ATTACKS.items()):
        for norm in cls.norms:
            kw = _kwargs(name, norm)
            x_adv = get_attack(name, model, **kw)(x, y)
            assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1, (name, norm)
            delta = (x_adv - x).flatten(1)
            bound = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
            if kw["eps"] != float("inf"):
                assert bool((bound <= kw["eps"] + 1e-5).all()), (name, norm)
            assert model.training, (name, norm)
