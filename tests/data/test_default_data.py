"""The embedded default data is learnable and attackable (issue #2's numbers), with default params."""

from __future__ import annotations

import pytest

from medrobust.attacks import get_attack
from medrobust.params import load_params
from medrobust.data.shards import load_split
from medrobust.stages import ingest, synthesize
from medrobust.models import accuracy
from medrobust.training import train_model
from medrobust.utils import seed_everything
from tests.conftest import REPO, build_from_params


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    params = load_params(REPO / "params.yaml")
    root = tmp_path_factory.mktemp("default")
    synthesize.run(params, root / "raw")
    ingest.run(params, root / "ingested", root / "raw" / "dicom", root / "raw" / "labels.csv")
    return params, root / "ingested"


def _train(params, dataset, method: str):
    seed_everything(params.seed)
    cfg = params.train
    train = load_split(dataset, "train")
    model, defense, _ = build_from_params(params, method, train)
    train_model(model, defense, train, None, epochs=cfg.epochs,
                batch_size=cfg.batch_size, optim=cfg.optim, seed=params.seed, hflip=cfg.hflip,
                clean_warmup_epochs=cfg.clean_warmup_epochs)
    return model


@pytest.mark.integration
def test_standard_model_learns_and_pgd_breaks_it(default_data):
    params, dataset = default_data
    test = load_split(dataset, "test")
    assert len(test) >= 80
    model = _train(params, dataset, "standard")
    clean = accuracy(model, test.x, test.y)
    adv = get_attack("pgd", model, eps=8 / 255, steps=20, seed=0)(test.x, test.y)
    robust = accuracy(model, adv, test.y)
    assert clean >= 0.90
    assert clean - robust >= 0.30, f"PGD-20 at 8/255 only drops {clean:.3f} -> {robust:.3f}"


@pytest.mark.integration
def test_default_defended_model_reaches_090_clean(default_data):
    params, dataset = default_data
    assert params.train.method == "pgd_at"
    test = load_split(dataset, "test")
    model = _train(params, dataset, params.train.method)
    assert accuracy(model, test.x, test.y) >= 0.90
