"""Evidence bound to the model: register refuses metrics or a model.pt changed after evaluation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medrobust.registry.evidence import TAGS, EvidenceError, verify
from medrobust.stages import register
from medrobust.utils import sha256_file
from tests.conftest import tiny_params

NAME = "medrobust-classifier"


def _versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'"))


def test_evidence_is_recorded_in_the_run_and_on_the_version(pipeline_run, registry):
    on_disk = json.loads((pipeline_run.evaluation / "evidence.json").read_text())
    assert on_disk["model_sha256"] == sha256_file(pipeline_run.model / "model.pt")
    assert on_disk["metrics_sha256"] == sha256_file(pipeline_run.evaluation / "metrics.json")
    assert on_disk["manifest_sha256"] == sha256_file(pipeline_run.dataset / "manifest.csv")
    run_id = json.loads((pipeline_run.model / "run.json").read_text())["run_id"]
    tags = registry.get_run(run_id).data.tags
    assert {tags[t] for t in TAGS.values()} == set(on_disk.values())
    assert tags["medrobust.trained_model_sha256"] == on_disk["model_sha256"]
    mv = registry.get_model_version(NAME, "1")
    assert mv.tags["medrobust.model_sha256"] == on_disk["model_sha256"]
    assert json.loads(pipeline_run.decision.read_text())["evidence"] == on_disk


def test_raised_metric_after_evaluate_is_refused(pipeline_run, registry, tmp_path):
    edited = tmp_path / "eval"
    shutil.copytree(pipeline_run.evaluation, edited)
    m = json.loads((edited / "metrics.json").read_text())
    m["clean"]["accuracy"]["value"] = min(1.0, m["clean"]["accuracy"]["value"] + 0.05)
    (edited / "metrics.json").write_text(json.dumps(m))
    before = _versions(registry)
    with pytest.raises(EvidenceError, match="metrics.json was modified after evaluation"):
        register.run(tiny_params(), pipeline_run.model, edited, tmp_path / "d.json")
    assert _versions(registry) == before  # no version, no alias moved
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert not (tmp_path / "d.json").exists()


def test_swapped_model_after_evaluate_is_refused(pipeline_run, registry, tmp_path):
    swapped = tmp_path / "model"
    shutil.copytree(pipeline_run.model, swapped)
    state = torch.load(swapped / "model.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    torch.save(state, swapped / "model.pt")
    before = _versions(registry)
    with pytest.raises(EvidenceError, match="evaluated model differs from the model being registered"):
        register.run(tiny_params(), swapped, pipeline_run.evaluation, tmp_path / "d.json")
    assert _versions(registry) == before
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_verify_names_what_is_missing_or_different(pipeline_run, tmp_path):
    model, metrics = pipeline_run.model / "model.pt", pipeline_run.evaluation / "metrics.json"
    tags = {TAGS["model_sha256"]: sha256_file(model), TAGS["metrics_sha256"]: sha256_file(metrics),
            TAGS["manifest_sha256"]: "x"}
    assert verify(tags, model, metrics).model_sha256 == sha256_file(model)
    with pytest.raises(EvidenceError, match="run `medrobust evaluate` on this model first"):
        verify({}, model, metrics)
    with pytest.raises(EvidenceError, match="not the model the train run logged"):
        verify({**tags, "medrobust.trained_model_sha256": "0" * 64}, model, metrics)


def test_missing_evaluation_names_the_stage(pipeline_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no evaluation in .*nothing .*run `medrobust evaluate` first"):
        register.run(tiny_params(), pipeline_run.model, tmp_path / "nothing", tmp_path / "d.json")


def test_stale_evaluation_says_it_is_stale(pipeline_run, registry, tmp_path):
    from medrobust.registry.gates import StaleEvaluationError

    other_gate = tiny_params(register={"gate_attack": "fgsm_linf", "gate_eps": "4/255"})
    with pytest.raises(StaleEvaluationError, match=r"evaluation is stale: it was computed for the gate pgd_linf at "
                                                   r"8/255.*fgsm_linf at 4/255.*run `medrobust evaluate` again"):
        register.run(other_gate, pipeline_run.model, pipeline_run.evaluation, tmp_path / "d.json")


def test_cli_fail_on_reject_exits_nonzero_for_ci(pipeline_run, candidates, registry, tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import tiny_gates, tiny_raw

    c = candidates[1]
    robust = json.loads((c.evaluation / "metrics.json").read_text())["headline"]["robust_accuracy"]["value"]
    assert robust < 1.0
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(register={"gates": tiny_gates(robust=1.0)})))
    cmd = [sys.executable, "-m", "medrobust.cli", "register", "--params", str(params), "--model", str(c.model),
           "--evaluation", str(c.evaluation), "--out", str(tmp_path / "d.json"),
           "--dataset", str(pipeline_run.dataset)]
    rejected = subprocess.run([*cmd, "--fail-on-reject"], capture_output=True, text=True, cwd=tmp_path)
    assert rejected.returncode == 1, rejected.stderr
    assert "rejected: robust_accuracy" in rejected.stderr and "Traceback" not in rejected.stderr
    assert json.loads((tmp_path / "d.json").read_text())["validation_status"] == "rejected"
    tampered = tmp_path / "eval"
    shutil.copytree(c.evaluation, tampered)
    (tampered / "metrics.json").write_text((tampered / "metrics.json").read_text() + "\n")
    refused = subprocess.run([*cmd[:-6], "--evaluation", str(tampered), "--out", str(tmp_path / "e.json"),
                              "--dataset", str(pipeline_run.dataset)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "metrics.json was modified after evaluation" in refused.stderr
    assert "Traceback" not in refused.stderr
    no_data = subprocess.run([*cmd[:-2], "--dataset", str(tmp_path / "none")], capture_output=True, text=True,
                             cwd=tmp_path)
    assert no_data.returncode == 2 and "no ingested dataset in" in no_data.stderr
    assert "run `medrobust ingest` first" in no_data.stderr
