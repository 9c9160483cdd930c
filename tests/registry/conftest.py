"""Registry fixtures: more trained-and-evaluated models beside the session pipeline's, and a fresh
copy of its sqlite registry per test."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_params, tracking_store


@dataclass
class Candidate:
    model: Path
    evaluation: Path


@pytest.fixture(scope="session")
def candidates(pipeline_run) -> list[Candidate]:
    """Two more models (other training seeds: other files, other MLflow runs), each evaluated, in the
    session's tracking store and not registered."""
    from medrobust.stages import evaluate, train

    out = []
    with tracking_store(pipeline_run.tracking_uri):
        for seed in (11, 12):
            p = tiny_params(seed=seed)
            c = Candidate(pipeline_run.root / f"model-{seed}", pipeline_run.root / f"evaluation-{seed}")
            train.run(p, pipeline_run.dataset, c.model)
            evaluate.run(p, pipeline_run.dataset, c.model, pipeline_run.advgen, c.evaluation)
            out.append(c)
    return out


@pytest.fixture
def registry(pipeline_run, candidates, tmp_path, monkeypatch):
    """A fresh registry (a copy of the session's sqlite store: version 1 is @champion) for each test."""
    db = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run.tracking_uri.removeprefix("sqlite:///"), db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")
