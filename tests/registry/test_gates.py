"""Gates as data, and promotion, against a real sqlite-backed MLflow model registry."""

from __future__ import annotations

import json
import time

import pytest

from medrobust.registry.gates import GateReport, GateSpec, StaleEvaluationError, change_gates, check_gates, resolve
from medrobust.stages import register
from tests.conftest import tiny_gates, tiny_params

NAME = "medrobust-classifier"


def _metrics(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def _champion(registry) -> str:
    return str(registry.get_model_version_by_alias(NAME, "champion").version)


def test_session_run_registered_and_promoted(pipeline_run, registry):
    decision = json.loads(pipeline_run.decision.read_text())
    assert decision["promoted"] and decision["validation_status"] == "passed"
    mv = registry.get_model_version_by_alias(NAME, "champion")
    assert str(mv.version) == decision["version"] == "1"
    assert mv.tags["validation_status"] == "passed"
    m = _metrics(pipeline_run.evaluation)
    assert float(mv.tags["gate.clean_accuracy.value"]) == pytest.approx(m["clean"]["accuracy"]["value"], abs=1e-6)
    assert mv.tags["gate.suite"] == m["suite"]["sha256"] and len(m["suite"]["sha256"]) == 64
    assert mv.tags["gate.robust_accuracy.verdict"] == "pass"
    # the first version had no champion to compare with: its change gates say so
    change = [g for g in decision["gates"] if g["kind"] == "change"]
    assert [g["name"] for g in change] == ["clean_accuracy.change", "robust_accuracy.change"]
    assert all(g["skipped"] and "no current champion" in g["message"] for g in change)
    assert mv.tags["gate.robust_accuracy.change.verdict"] == "skipped"


def test_gate_fail_tags_rejection_and_keeps_champion(candidates, registry, tmp_path):
    c = candidates[0]
    robust = _metrics(c.evaluation)["whitebox"]["pgd_linf"]["8/255"]["accuracy"]["value"]
    assert robust < 1.0
    strict = tiny_params(register={"gates": tiny_gates(robust=min(1.0, robust + 0.01))})
    d = register.run(strict, c.model, c.evaluation, tmp_path / "decision.json")
    assert not d.promoted and d.version == "2" and d.status == "rejected"
    on_disk = json.loads((tmp_path / "decision.json").read_text())
    assert on_disk["validation_status"] == "rejected" and on_disk["failed_gates"] == ["robust_accuracy"]
    assert on_disk["champion"] == "1"
    mv = registry.get_model_version(NAME, "2")
    assert mv.tags["validation_status"] == "rejected" and mv.tags["failed_gates"] == "robust_accuracy"
    assert mv.tags["gate.robust_accuracy.verdict"] == "fail"
    assert float(mv.tags["gate.robust_accuracy.threshold"]) == pytest.approx(min(1.0, robust + 0.01))
    assert _champion(registry) == "1"
    assert not registry.get_registered_model(NAME).aliases.get("challenger")


def test_gate_pass_moves_champion(candidates, registry, tmp_path):
    c = candidates[0]
    lenient = tiny_params(register={"gates": tiny_gates(tolerance=1.0)})
    d = register.run(lenient, c.model, c.evaluation, tmp_path / "d.json")
    assert d.promoted and d.previous_champion == "1" and d.version == "2"
    assert _champion(registry) == "2"
    assert [g.name for g in d.gates] == ["clean_accuracy", "robust_accuracy", "certificate_soundness",
                                         "clean_accuracy.change", "robust_accuracy.change"]
    assert all(not g.skipped and g.champion is not None for g in d.gates if g.kind == "change")
    assert registry.get_model_version(NAME, "2").tags["medrobust.previous_champion"] == "1"


def test_pass_that_is_not_better_becomes_challenger(candidates, registry, tmp_path):
    # the champion's recorded clean accuracy 0.1 above the candidate's: beyond the tolerance of 0.02
    c = candidates[0]
    m = _metrics(c.evaluation)
    assert m["clean"]["accuracy"]["value"] <= 0.9
    registry.set_model_version_tag(NAME, "1", "gate.clean_accuracy.value", f"{m['clean']['accuracy']['value'] + 0.1:.6f}")
    d = register.run(tiny_params(), c.model, c.evaluation, tmp_path / "d.json")
    assert d.status == "challenger" and not d.promoted
    assert [g.name for g in d.gates if not g.passed] == ["clean_accuracy.change"]
    assert _champion(registry) == "1"
    assert str(registry.get_model_version_by_alias(NAME, "challenger").version) == d.version == "2"
    mv = registry.get_model_version(NAME, "2")
    assert mv.tags["validation_status"] == "challenger" and mv.tags["failed_gates"] == "clean_accuracy.change"


def test_candidate_002_worse_with_tolerance_001_is_not_promoted_and_names_the_gate(candidates, registry, tmp_path):
    """The acceptance case: 0.02 worse than the champion on worst-case robust accuracy, tolerance 0.01."""
    c = candidates[0]
    robust = _metrics(c.evaluation)["whitebox"]["pgd_linf"]["8/255"]["accuracy"]["value"]
    registry.set_model_version_tag(NAME, "1", "gate.robust_accuracy.value", f"{robust + 0.02:.6f}")
    registry.set_model_version_tag(NAME, "1", "gate.clean_accuracy.value", "0.0")
    d = register.run(tiny_params(register={"gates": tiny_gates(tolerance=0.01)}), c.model, c.evaluation,
                     tmp_path / "d.json")
    assert not d.promoted and _champion(registry) == "1"
    assert [g.name for g in d.gates if not g.passed] == ["robust_accuracy.change"]
    failed = next(g for g in d.gates if g.name == "robust_accuracy.change")
    assert failed.champion == pytest.approx(robust + 0.02, abs=1e-6) and failed.threshold == pytest.approx(robust + 0.01,
                                                                                                          abs=1e-6)
    assert "worse by 0.020" in failed.message and "tolerance 0.010" in failed.message
    assert registry.get_model_version(NAME, d.version).tags["failed_gates"] == "robust_accuracy.change"
    assert "| robust_accuracy.change |" in registry.get_model_version(NAME, d.version).description


def test_champion_of_another_suite_skips_the_change_gates(candidates, registry, tmp_path):
    c = candidates[0]
    registry.set_model_version_tag(NAME, "1", "gate.clean_accuracy.value", "1.0")
    registry.set_model_version_tag(NAME, "1", "gate.suite", "0" * 64)
    d = register.run(tiny_params(), c.model, c.evaluation, tmp_path / "d.json")
    assert d.promoted
    change = [g for g in d.gates if g.kind == "change"]
    assert change and all(g.skipped and "another suite" in g.message for g in change)


def test_the_suite_fingerprint_covers_the_certificates_but_not_their_batch_size():
    from medrobust.stages.evaluate import suite_fingerprint

    def sha(**certify) -> str:
        return suite_fingerprint(tiny_params(evaluate={"certify": certify}))["sha256"]

    base = sha()
    assert sha(batch_size=7) == base
    assert len({base, sha(n=300), sha(sigmas=[0.5]), sha(gate_radius=0.2), sha(thorough=True),
                sha(soundness={"steps": 5})}) == 6


def test_registering_the_same_model_again_changes_nothing(pipeline_run, registry, tmp_path):
    before = sorted(v.version for v in registry.search_model_versions(f"name='{NAME}'"))
    d = register.run(tiny_params(), pipeline_run.model, pipeline_run.evaluation, tmp_path / "d.json")
    assert d.already_registered and d.version == "1" and d.status == "champion" and d.gates == []
    assert sorted(v.version for v in registry.search_model_versions(f"name='{NAME}'")) == before
    assert json.loads((tmp_path / "d.json").read_text())["already_registered"] is True


def _report(values: dict[str, float], suite: str = "s" * 64) -> GateReport:
    return GateReport((), values, suite)


def test_change_thresholds_absolute_relative_and_direction():
    cfg = tiny_params(register={"gates": [
        {"name": "acc", "metric": "clean.accuracy", "lower_bound": 0.0, "max_regression": 0.05},
        {"name": "rel", "metric": "clean.accuracy", "lower_bound": 0.0, "max_regression": 0.1, "regression": "relative"},
        {"name": "ece", "metric": "clean.ece", "upper_bound": 1.0, "max_regression": 0.01},
    ]}).register
    champ = {"gate.suite": "s" * 64, "gate.acc.value": "0.90", "gate.rel.value": "0.50", "gate.ece.value": "0.05"}
    ok = {g.name: g for g in change_gates(_report({"acc": 0.86, "rel": 0.46, "ece": 0.059}), champ, cfg)}
    assert all(g.passed and not g.skipped for g in ok.values())
    bad = {g.name: g for g in change_gates(_report({"acc": 0.84, "rel": 0.44, "ece": 0.061}), champ, cfg)}
    assert not any(g.passed for g in bad.values())
    assert bad["rel.change"].threshold == pytest.approx(0.45) and bad["ece.change"].threshold == pytest.approx(0.06)
    none = change_gates(_report({"acc": 0.1}), None, cfg)
    assert all(g.passed and g.skipped for g in none)


def test_value_gates_on_the_estimate_or_the_ci_bound(pipeline_run):
    m = _metrics(pipeline_run.evaluation)
    acc = m["clean"]["accuracy"]
    assert acc["ci_low"] < acc["value"]
    between = (acc["ci_low"] + acc["value"]) / 2
    gates = [{"name": "point", "metric": "clean.accuracy", "lower_bound": between},
             {"name": "ci", "metric": "clean.accuracy", "lower_bound": between, "use": "ci"},
             {"name": "ece_ci", "metric": "clean.ece", "upper_bound": 1.0, "use": "ci"}]
    report = check_gates(m, tiny_params(register={"gates": gates}).register)
    by = {g.name: g for g in report.results}
    assert by["point"].passed and by["point"].value == pytest.approx(acc["value"])
    assert not by["ci"].passed and by["ci"].value == pytest.approx(acc["ci_low"]) and "lower bound" in by["ci"].message
    assert by["ece_ci"].passed and by["ece_ci"].value == pytest.approx(m["clean"]["ece"]["ci_high"])
    missing = tiny_params(register={"gates": [{"name": "x", "metric": "clean.nope", "lower_bound": 0.1}]}).register
    with pytest.raises(StaleEvaluationError, match=r"gate x: metrics.json has no clean.nope"):
        check_gates(m, missing)


def test_default_gates_read_every_figure_they_name(pipeline_run):
    """params.yaml's gates (ECE, sensitivity under attack, shifts, worst slice) resolve on a real evaluation."""
    from medrobust.params import load_params
    from tests.conftest import REPO

    cfg = load_params(REPO / "params.yaml").register.model_copy(update={"gate_attack": "pgd_linf"})
    report = check_gates(_metrics(pipeline_run.evaluation), cfg)
    names = [g.name for g in report.results]
    assert names == ["clean_accuracy", "robust_accuracy", "robust_sensitivity", "clean_ece", "shift_accuracy",
                     "worst_slice", "masking_checks", "certificate_soundness"]
    assert set(report.values) == set(names[:-2]) and all(0.0 <= v <= 1.0 for v in report.values.values())


def test_metric_paths_with_dotted_keys():
    m = {"whitebox": {"pgd_l2": {"0.5": {"accuracy": {"value": 0.7}}, "0": {"x": 1}}}}
    assert resolve(m, "whitebox.pgd_l2.0.5.accuracy", "")["value"] == 0.7
    assert resolve(m, "{gate}.accuracy", "whitebox.pgd_l2.0.5")["value"] == 0.7
    with pytest.raises(KeyError, match="whitebox.pgd_l2.1"):
        resolve(m, "whitebox.pgd_l2.1.accuracy", "")


def test_gate_spec_validation():
    with pytest.raises(ValueError, match="lower_bound or upper_bound, not both"):
        GateSpec(name="a", metric="clean.accuracy", lower_bound=0.1, upper_bound=0.2)
    with pytest.raises(ValueError, match="change-only gate must say higher_is_better"):
        GateSpec(name="a", metric="clean.accuracy", max_regression=0.1)
    with pytest.raises(ValueError, match="duplicate gate names"):
        tiny_params(register={"gates": [{"name": "a", "metric": "clean.accuracy", "lower_bound": 0.1}] * 2})


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


def test_promotion_lease_excludes_a_second_writer_and_breaks_a_stale_one(tmp_path):
    from mlflow import MlflowClient

    from medrobust.registry.champion import LeaseError, lease_name, promotion_lease, still_holding
    from medrobust.registry.config import PromotionConfig

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'lease.db'}")
    quick = PromotionConfig(retries=3, lease_s=60, backoff_s=0.01)
    with promotion_lease(client, NAME, quick) as token:
        assert still_holding(client, NAME, token)
        with pytest.raises(LeaseError, match=r"promotion lease of medrobust-classifier in 3 attempts"):
            with promotion_lease(client, NAME, quick):
                pass
        assert still_holding(client, NAME, token)  # the loser did not release the winner's lease
    assert not client.search_registered_models(f"name = '{lease_name(NAME)}'")
    # a holder that died: its lease is older than lease_s and is broken
    client.create_registered_model(lease_name(NAME), tags={"holder": "dead:1:x"})
    time.sleep(0.05)
    stale = PromotionConfig(retries=3, lease_s=0.001, backoff_s=0.01)
    with promotion_lease(client, NAME, stale) as token:
        assert token != "dead:1:x" and still_holding(client, NAME, token)


def test_the_evaluation_certifies_and_reports_certified_accuracy_with_intervals(pipeline_run):
    m = _metrics(pipeline_run.evaluation)
    cert = m["certified"]
    n_images = min(16, m["headline"]["n_test"])  # max_images, or every test image
    assert n_images >= 8 and cert["n_images"] == n_images and cert["n"] == 200 and cert["image_values"] == 32 * 32
    entry = cert["sigma"]["0.25"]
    accs = [entry["accuracy"][r]["value"] for r in ("0", "0.1", "0.25", "0.5")]
    assert accs == sorted(accs, reverse=True)  # certified accuracy falls with the radius
    assert all(entry["accuracy"][r]["n"] == n_images and entry["accuracy"][r]["ci"][0] <= entry["accuracy"][r]["value"]
               for r in entry["accuracy"])
    assert accs[0] + entry["abstain"]["value"] <= 1.0 + 1e-9
    assert cert["gate"]["accuracy"] == entry["accuracy"]["0.1"] and cert["gate"]["radius"] == 0.1
    assert cert["linf_equivalent_255"]["0.5"] == pytest.approx(255 * 0.5 / 32, abs=1e-3)
    assert cert["soundness"]["passed"] and cert["soundness"]["violations"] == 0
    ev = pipeline_run.evaluation
    rows = (ev / "certified.csv").read_text().splitlines()
    assert rows[0].startswith("series,sigma,radius") and len(rows) == 1 + 4
    assert (ev / "certified.png").stat().st_size > 5000
    assert "Certified robustness (randomized smoothing)" in (ev / "report.html").read_text()
    timing = json.loads((ev / "timing.json").read_text())["seconds"]
    assert timing["certify"] > 0
    gates = json.loads((ev / "gates.json").read_text())["gates"]
    assert [g["name"] for g in gates if g["kind"] == "check"] == ["certificate_soundness"]


def test_min_certified_accuracy_gate_passes_and_fails_against_the_registry(candidates, registry, tmp_path):
    def figure(c) -> float:
        return _metrics(c.evaluation)["certified"]["gate"]["accuracy"]["value"]

    def gates(bound: float) -> list[dict]:
        return tiny_gates(tolerance=1.0) + [{"name": "min_certified_accuracy", "metric": "certified.gate.accuracy",
                                             "lower_bound": bound}]

    c, other = candidates
    strict = register.run(tiny_params(register={"gates": gates(min(1.0, figure(c) + 0.01))}), c.model, c.evaluation,
                          tmp_path / "strict.json")
    assert not strict.promoted and strict.status == "rejected"
    assert json.loads((tmp_path / "strict.json").read_text())["failed_gates"] == ["min_certified_accuracy"]
    mv = registry.get_model_version(NAME, strict.version)
    assert mv.tags["gate.min_certified_accuracy.verdict"] == "fail"
    assert float(mv.tags["gate.min_certified_accuracy.value"]) == pytest.approx(figure(c), abs=1e-6)
    assert _champion(registry) == "1"
    lenient = register.run(tiny_params(register={"gates": gates(figure(other))}), other.model, other.evaluation,
                           tmp_path / "lenient.json")
    assert lenient.promoted and _champion(registry) == lenient.version
    assert registry.get_model_version(NAME, lenient.version).tags["gate.min_certified_accuracy.verdict"] == "pass"


def test_an_unsound_certificate_fails_its_gate():
    from medrobust.registry.gates import GatesConfig, soundness_gate

    metrics = {"certified": {"soundness": {"passed": False, "violations": 2, "checked": 9,
                                           "message": "σ=0.25: 2 changed class"}}}
    gate = soundness_gate(metrics)
    assert gate is not None and not gate.passed and gate.value == 2.0 and gate.kind == "check"
    assert soundness_gate({}) is None  # certify not run: no gate
    assert GatesConfig().require_certificate_soundness
