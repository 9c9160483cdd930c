"""Gates and promotion against a real sqlite-backed MLflow model registry."""

from __future__ import annotations

import json
import shutil

import pytest

from medrobust.registry.gates import champion_gate
from medrobust.stages import register
from tests.conftest import tiny_params


@pytest.fixture
def registry(pipeline_run, tmp_path, monkeypatch):
    """A fresh registry (a copy of the session's sqlite store) for each test."""
    db = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run.tracking_uri.removeprefix("sqlite:///"), db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _metrics(pipeline_run) -> dict:
    return json.loads((pipeline_run.evaluation / "metrics.json").read_text())


def test_session_run_registered_and_promoted(pipeline_run, registry):
    decision = json.loads(pipeline_run.decision.read_text())
    assert decision["promoted"] and decision["validation_status"] == "passed"
    mv = registry.get_model_version_by_alias("medrobust-classifier", "champion")
    assert str(mv.version) == decision["version"] == "1"
    assert mv.tags["validation_status"] == "passed"
    assert float(mv.tags["gate.clean_accuracy"]) == pytest.approx(_metrics(pipeline_run)["clean"]["accuracy"]["value"], abs=1e-6)


def test_gate_fail_tags_rejection_and_keeps_champion(pipeline_run, registry, tmp_path):
    robust = _metrics(pipeline_run)["whitebox"]["pgd_linf"]["8/255"]["accuracy"]["value"]
    strict = tiny_params(register={"gates": {"min_robust_accuracy": min(1.0, robust + 0.01)}})
    d = register.run(strict, pipeline_run.model, pipeline_run.evaluation, tmp_path / "decision.json")
    assert not d.promoted and d.version == "2"
    on_disk = json.loads((tmp_path / "decision.json").read_text())
    assert on_disk["validation_status"] == "rejected" and on_disk["failed_gates"] == ["min_robust_accuracy"]
    assert on_disk["champion"] == "1"
    mv = registry.get_model_version("medrobust-classifier", "2")
    assert mv.tags["validation_status"] == "rejected" and mv.tags["failed_gates"] == "min_robust_accuracy"
    assert str(registry.get_model_version_by_alias("medrobust-classifier", "champion").version) == "1"


def test_gate_pass_moves_champion(pipeline_run, registry, tmp_path):
    d = register.run(tiny_params(), pipeline_run.model, pipeline_run.evaluation, tmp_path / "d.json")
    assert d.promoted and d.previous_champion == "1" and d.version == "2"
    assert str(registry.get_model_version_by_alias("medrobust-classifier", "champion").version) == "2"
    assert [g.name for g in d.gates] == ["min_clean_accuracy", "min_robust_accuracy", "no_regression_vs_champion"]


def test_regression_against_champion_is_rejected(pipeline_run, registry, tmp_path):
    # a champion whose recorded gate numbers are 0.1 better than this evaluation's
    m = _metrics(pipeline_run)
    assert m["clean"]["accuracy"]["value"] <= 0.9
    champ = registry.get_model_version_by_alias("medrobust-classifier", "champion")
    better = f"{m['clean']['accuracy']['value'] + 0.1:.6f}"
    registry.set_model_version_tag("medrobust-classifier", champ.version, "gate.clean_accuracy", better)
    d = register.run(tiny_params(), pipeline_run.model, pipeline_run.evaluation, tmp_path / "d.json")
    assert not d.promoted
    assert [g.name for g in d.gates if not g.passed] == ["no_regression_vs_champion"]
    assert str(registry.get_model_version_by_alias("medrobust-classifier", "champion").version) == "1"


def test_champion_gate_tolerance_and_incomparable_champion():
    gates = tiny_params(register={"gates": {"champion_tolerance": 0.05}}).register.gates
    champ = {"gate.clean_accuracy": "0.90", "gate.robust_accuracy": "0.60", "gate.attack": "pgd_linf",
             "gate.eps": f"{8 / 255:.9g}"}
    assert champion_gate(0.86, 0.56, champ, gates).passed
    assert not champion_gate(0.84, 0.60, champ, gates).passed
    assert not champion_gate(0.90, 0.54, champ, gates).passed
    other = {**champ, "gate.eps": "0.0156862745"}
    res = champion_gate(0.1, 0.1, other, gates)
    assert res.passed and "not comparable" in res.message
