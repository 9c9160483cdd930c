"""Every registered training method trains on tiny data, and the evaluate stage accepts the model."""

from __future__ import annotations

import json

import pytest

from medrobust.defenses import TRAINING_METHODS
from medrobust.stages import evaluate, train
from tests.conftest import tiny_params


@pytest.mark.integration
@pytest.mark.parametrize("method", sorted(TRAINING_METHODS))
def test_method_trains_and_evaluates(pipeline_run, tmp_path, monkeypatch, method):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params(train={"method": method, "epochs": 1},
                         evaluate={"masking": {"enabled": False}, "shifts": {"enabled": False}})
    result = train.run(params, pipeline_run.dataset, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "run.json").read_text())["method"] == method
    assert (tmp_path / "model" / "checkpoints" / "epoch_001.pt").exists()
    ev = evaluate.run(params, pipeline_run.dataset, tmp_path / "model", pipeline_run.advgen, tmp_path / "eval")
    assert 0.0 <= ev.metrics["clean"]["accuracy"]["value"] <= 1.0
    assert result.run_id
