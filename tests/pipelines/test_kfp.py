"""Kubeflow: the compiled pipeline matches the committed snapshot, is valid, and runs with kfp.local."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from medrobust.pipelines.dag import compile_pipeline
from tests.conftest import REPO, tiny_raw, write_params

SNAPSHOT = REPO / "pipelines" / "medrobust_pipeline.yaml"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")


def test_fresh_compile_matches_committed_snapshot(fresh):
    assert fresh.read_text() == SNAPSHOT.read_text(), (
        "the pipeline changed: run `make compile` and commit pipelines/medrobust_pipeline.yaml"
    )


def test_compiled_spec_is_strictly_valid(fresh):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline_doc, platform_doc = list(yaml.safe_load_all(fresh.read_text()))
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    tasks = spec.root.dag.tasks
    assert {"synthesize", "ingest", "advgen", "train", "evaluate"} <= set(tasks)
    # register sits under a condition on evaluate's output, in both branches
    text = json.dumps(pipeline_doc)
    assert "pipelinechannel--evaluate-Output" in text and text.count("comp-register") >= 2
    for name in ("advgen", "train", "evaluate"):
        res = spec.deployment_spec["executors"][f"exec-{name}"]["container"]["resources"]
        assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    k8s = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("advgen", "train", "evaluate"):
        assert k8s[f"exec-{name}"]["nodeSelector"]["labels"] == {"medrobust.io/node-pool": "gpu"}
        assert k8s[f"exec-{name}"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # ingest's source credentials and the pseudonymisation key come from an optional secret, never params
    data_env = {e["envVar"]: e["secretKey"] for e in k8s["exec-ingest"]["secretAsEnv"][0]["keyToEnv"]}
    assert k8s["exec-ingest"]["secretAsEnv"][0]["secretName"] == "medrobust-data"
    assert {"MEDROBUST_PACS_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MEDROBUST_PSEUDONYM_KEY"} <= set(data_env)
    assert tasks["train"].retry_policy.max_retry_count == 2
    assert tasks["train"].caching_options.enable_cache


@pytest.mark.integration
def test_kfp_local_run_on_tiny_data(tmp_path, monkeypatch):
    """The whole DAG with kfp.local's SubprocessRunner: every task is a real subprocess."""
    from medrobust.config import load_params
    from medrobust.pipelines.local import run_local

    params_path = write_params(tmp_path / "params.yaml", tiny_raw())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    run_dir = run_local(load_params(params_path), params_path, tmp_path / "kfp")
    assert (run_dir / "ingest" / "dataset" / "manifest.csv").exists()
    assert (run_dir / "advgen" / "adversarial" / "manifest.csv").exists()
    assert (run_dir / "train" / "model" / "model.pt").exists()
    metrics = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["clean"]["accuracy"] <= 1.0
    decision = json.loads((run_dir / "register" / "decision").read_text())
    assert decision["promoted"] is True and decision["version"] == "1"
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "medrobust-classifier", "champion")
    assert str(mv.version) == "1"
