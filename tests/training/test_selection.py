"""Keeping the best epoch, not the last: the loop's ``select`` hook and the robust validation score."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medrobust.data.shards import ArraySplit
from medrobust.defenses.standard import Standard
from medrobust.models import ModelSpec, build_model
from medrobust.training import OptimConfig, train_model
from medrobust.training.selection import clean_score, robust_score
from tests.conftest import toy_task


def test_the_model_ends_with_the_best_scoring_epochs_weights(tmp_path):
    x, y = toy_task(64)
    split = ArraySplit(x, y, pd.DataFrame({"i": range(64)}))
    scores = iter([0.2, 0.6, 0.6, 0.1])  # epochs 2 and 3 tie: the later one is kept
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16))
    history = train_model(model, Standard(), split, split, epochs=4, batch_size=16, optim=OptimConfig(), seed=0,
                          checkpoint_dir=tmp_path, select=lambda m: next(scores))
    assert history.best_epoch == 3 and [e["val_select"] for e in history.epochs] == [0.2, 0.6, 0.6, 0.1]
    kept = torch.load(tmp_path / "epoch_003.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "epoch_004.pt", weights_only=True)["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], kept[k]) for k in state)
    assert not all(torch.equal(state[k], last[k]) for k in state)
    without = train_model(build_model(ModelSpec("small_cnn", 2, width=4, image_size=16)), Standard(), split, None,
                          epochs=2, batch_size=16, optim=OptimConfig(), seed=0)
    assert without.best_epoch == 2


def test_robust_score_is_below_clean_and_falls_with_eps(trained):
    model, x, y = trained
    val = ArraySplit(x, y, None)
    clean = clean_score(val)(model)
    weak = robust_score(val, "linf", 1 / 255, steps=5, max_images=64, seed=0)(model)
    strong = robust_score(val, "linf", 16 / 255, steps=5, max_images=64, seed=0)(model)
    assert clean == pytest.approx(1.0) and 0.0 <= strong < weak <= 1.0
    assert robust_score(val, "linf", 16 / 255, steps=5, max_images=64, seed=0)(model) == strong  # seeded
    assert 0.0 <= robust_score(val, "l2", 0.5, steps=3, max_images=16, seed=0)(model) <= 1.0
