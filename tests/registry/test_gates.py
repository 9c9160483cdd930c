"""Gates and promotion against a real sqlite-backed MLflow model registry."""

from __future__ import annotations

import json

import pytest

from medrobust.registry.gates import champion_gate
from medrobust.stages import register
from tests.conftest import tiny_params


def _metrics(pipeline_run) -> dict:
    return json.loads((pipeline_run.evaluation / "metrics.json").read_text())


def test_session_run_registered_and_promoted(pipeline_run, registry):
    decision = json.loads(pipeline_run.decision.read_text())
    assert decision["promoted"] and decision["validation_status"] == "passed"
    mv = registry.get_model_version_by_alias("medrobust-classifier", "champion")
    assert str(mv.version) == decision["version"] == "1"
    assert mv.tags["validation_status"] == "passed"
    assert float(mv.tags["gate.clean_accuracy"]) == pytest.approx(_metrics(pipeline_run)["clean"]["accuracy"]["value"], abs=1e-6)


NAME = "medrobust-classifier"


def _champion(registry) -> str:
    return str(registry.get_model_version_by_alias(NAME, "champion").version)


def test_gate_fail_tags_rejection_and_keeps_champion(candidates, registry, tmp_path):
    c = candidates[0]
    robust = json.loads((c.evaluation / "metrics.json").read_text())["whitebox"]["pgd_linf"]["8/255"]["accuracy"]["value"]
    assert robust < 1.0
    strict = tiny_params(register={"gates": {"min_robust_accuracy": min(1.0, robust + 0.01)}})
    d = register.run(strict, c.model, c.evaluation, tmp_path / "decision.json")
    assert not d.promoted and d.version == "2" and d.status == "rejected"
    on_disk = json.loads((tmp_path / "decision.json").read_text())
    assert on_disk["validation_status"] == "rejected" and on_disk["failed_gates"] == ["min_robust_accuracy"]
    assert on_disk["champion"] == "1"
    mv = registry.get_model_version(NAME, "2")
    assert mv.tags["validation_status"] == "rejected" and mv.tags["failed_gates"] == "min_robust_accuracy"
    assert _champion(registry) == "1"
    assert not registry.get_registered_model(NAME).aliases.get("challenger")


def test_gate_pass_moves_champion(candidates, registry, tmp_path):
    c = candidates[0]
    lenient = tiny_params(register={"gates": {"champion_tolerance": 1.0}})
    d = register.run(lenient, c.model, c.evaluation, tmp_path / "d.json")
    assert d.promoted and d.previous_champion == "1" and d.version == "2"
    assert _champion(registry) == "2"
    assert [g.name for g in d.gates] == ["min_clean_accuracy", "min_robust_accuracy", "no_regression_vs_champion"]


def test_pass_that_is_not_better_becomes_challenger(pipeline_run, candidates, registry, tmp_path):
    # the champion's recorded numbers 0.1 better than the candidate's: within no tolerance of 0.02
    c = candidates[0]
    m = json.loads((c.evaluation / "metrics.json").read_text())
    assert m["clean"]["accuracy"]["value"] <= 0.9
    registry.set_model_version_tag(NAME, "1", "gate.clean_accuracy", f"{m['clean']['accuracy']['value'] + 0.1:.6f}")
    d = register.run(tiny_params(), c.model, c.evaluation, tmp_path / "d.json")
    assert d.status == "challenger" and not d.promoted
    assert [g.name for g in d.gates if not g.passed] == ["no_regression_vs_champion"]
    assert _champion(registry) == "1"
    assert str(registry.get_model_version_by_alias(NAME, "challenger").version) == d.version == "2"
    mv = registry.get_model_version(NAME, "2")
    assert mv.tags["validation_status"] == "challenger" and mv.tags["failed_gates"] == "no_regression_vs_champion"


def test_registering_the_same_model_again_changes_nothing(pipeline_run, registry, tmp_path):
    before = sorted(v.version for v in registry.search_model_versions(f"name='{NAME}'"))
    d = register.run(tiny_params(), pipeline_run.model, pipeline_run.evaluation, tmp_path / "d.json")
    assert d.already_registered and d.version == "1" and d.status == "champion" and d.gates == []
    assert sorted(v.version for v in registry.search_model_versions(f"name='{NAME}'")) == before
    assert json.loads((tmp_path / "d.json").read_text())["already_registered"] is True


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


def test_serving_check_loads_the_version_in_a_fresh_process(pipeline_run, candidates, registry):
    from medrobust.data.shards import load_split
    from medrobust.registry.serving import serving_gate

    decision = json.loads(pipeline_run.decision.read_text())
    serving = next(g for g in decision["gates"] if g["name"] == "serving_check")
    assert serving["passed"] and serving["value"] <= 1e-5 and serving["threshold"] == 1e-5
    assert "pytorch" in serving["message"] and "pyfunc" in serving["message"]
    # the same version against another model's weights: the registry would serve a different model
    images = load_split(pipeline_run.dataset, "test").x.numpy()
    other = serving_gate(f"models:/{NAME}/1", candidates[0].model, images)
    assert not other.passed and other.value > 1e-5 and "would serve another model" in other.message
    missing = serving_gate(f"models:/{NAME}/99", pipeline_run.model, images)
    assert not missing.passed and "did not load or predict in a fresh process" in missing.message
