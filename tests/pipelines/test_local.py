"""The whole Kubeflow DAG on this machine with kfp.local's SubprocessRunner: every task a real subprocess."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import tiny_raw, write_params


@pytest.mark.integration
def test_kfp_local_run_on_tiny_data(tmp_path, monkeypatch):
    """The whole DAG with kfp.local's SubprocessRunner: every task is a real subprocess."""
    from medrobust.params import load_params
    from medrobust.pipelines.local import run_local

    params_path = write_params(tmp_path / "params.yaml", tiny_raw())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    run_dir = run_local(load_params(params_path), params_path, tmp_path / "kfp")
    assert (run_dir / "ingest" / "dataset" / "manifest.csv").exists()
    assert (run_dir / "advgen" / "adversarial" / "manifest.csv").exists()
    assert (run_dir / "train" / "model" / "model.pt").exists()
    metrics = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["clean"]["accuracy"]["value"] <= 1.0
    decision = json.loads((run_dir / "register" / "decision").read_text())
    assert decision["promoted"] is True and decision["version"] == "1"
    report = (run_dir / "register" / "report").read_text()
    assert report.split("\n## ")[-1].startswith("Registry decision: medrobust-classifier version 1")
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "medrobust-classifier", "champion")
    assert str(mv.version) == "1"
