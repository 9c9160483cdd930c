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
    # the ParallelFor ran one attack task per suite entry, and evaluate merged their runs instead of attacking
    runs = [json.loads(p.read_text()) for p in sorted(run_dir.glob("for-loop-*-iteration-*/attack/attacked/attack.json"))]
    assert sorted(r["key"] for r in runs) == sorted(a.key for a in load_params(params_path).evaluate.attacks)
    timing = json.loads((run_dir / "evaluate" / "evaluation" / "timing.json").read_text())["seconds"]
    assert all(timing[f"{r['key']}@{label}"] == s for r in runs for label, s in r["seconds"].items())
    assert set(metrics["whitebox"]) == {r["key"] for r in runs}
    decision = json.loads((run_dir / "register" / "decision").read_text())
    assert decision["promoted"] is True and decision["version"] == "1"
    report = (run_dir / "register" / "report").read_text()
    assert report.split("\n## ")[-1].startswith("Registry decision: medrobust-classifier version 1")
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "medrobust-classifier", "champion")
    assert str(mv.version) == "1"
    # the exit handler ran last and recorded the success
    status = json.loads((run_dir / "pipeline-status" / "run_status").read_text())
    assert status["state"] == "SUCCEEDED" and status["error_message"] == ""
    (run,) = _status_runs(os.environ["MLFLOW_TRACKING_URI"])
    assert run.data.tags["medrobust.pipeline_state"] == "SUCCEEDED"


def _status_runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("medrobust")
    return client.search_runs([exp.experiment_id], "tags.`medrobust.kind` = 'pipeline-status'")


@pytest.mark.integration
def test_the_exit_handler_records_a_failed_run_as_json_and_in_mlflow(tmp_path, monkeypatch):
    """A run that fails in ingest (validation refuses the data): the exit task still runs and says so."""
    from medrobust.params import load_params
    from medrobust.pipelines.local import run_local

    params_path = write_params(tmp_path / "params.yaml", tiny_raw(validation={"min_images_per_split": 10_000},
                                                                  kubeflow={"retries": 0}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError):
        run_local(load_params(params_path), params_path, tmp_path / "kfp")
    (run_dir,) = (tmp_path / "kfp").iterdir()
    assert not (run_dir / "train").exists()  # nothing after the failed step ran
    status = json.loads((run_dir / "pipeline-status" / "run_status").read_text())
    assert status["state"] == "FAILED" and status["recorded_at"]
    (run,) = _status_runs(uri)
    assert run.info.run_name == "pipeline-failed" and run.data.tags["medrobust.pipeline_state"] == "FAILED"
