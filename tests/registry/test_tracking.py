"""Where the tracking store is: one registry per repository, also from DVC's temporary experiment copies."""

from __future__ import annotations

from medrobust.registry.tracking import MlflowConfig, repository_root, resolve_tracking_uri, tracking_uri


def test_repository_root_from_a_subfolder_and_from_a_dvc_experiment_workspace(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "reports" / "evaluation").mkdir(parents=True)
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpk2j4x9"
    (workspace / ".dvc").mkdir(parents=True)  # the temporary copy is a DVC repository itself
    (workspace / "src").mkdir()
    assert repository_root(repo) == repo.resolve()
    assert repository_root(repo / "reports" / "evaluation") == repo.resolve()
    assert repository_root(workspace) == repo.resolve()
    assert repository_root(workspace / "src") == repo.resolve()
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    assert repository_root(elsewhere) == elsewhere.resolve()


def test_relative_sqlite_store_is_anchored_at_the_repository(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    (workspace / ".dvc").mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(workspace)
    expected = f"sqlite:///{(repo / 'mlflow.db').resolve()}"
    assert resolve_tracking_uri("sqlite:///mlflow.db") == expected
    assert tracking_uri(MlflowConfig()) == expected
    assert resolve_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(MlflowConfig()) == "http://mlflow:5000"


def test_run_params_keep_only_the_active_method_and_source():
    from tests.conftest import tiny_params

    from medrobust.registry.tracking import flatten, run_params

    full = tiny_params().to_dict()
    trimmed = run_params(full)
    assert list(trimmed["train"]["methods"]) == ["pgd_at"]
    assert trimmed["train"]["methods"]["pgd_at"] == full["train"]["methods"]["pgd_at"]
    assert "pacs" not in trimmed["data"] and "s3" not in trimmed["data"] and "synthetic" in trimmed["data"]
    assert full["train"]["methods"].keys() > {"pgd_at", "trades"}  # the input is untouched
    assert len(flatten(trimmed)) < len(flatten(full)) - 60


def test_training_run_records_commit_data_hash_and_dataset_input(pipeline_run):
    import json

    from mlflow import MlflowClient

    from medrobust.utils import dvc_md5

    run_id = json.loads((pipeline_run.model / "run.json").read_text())["run_id"]
    run = MlflowClient(tracking_uri=pipeline_run.tracking_uri).get_run(run_id)
    assert run.data.tags["medrobust.data_dvc_md5"] == dvc_md5(pipeline_run.dataset)
    assert not any(k.startswith("train.methods.trades") for k in run.data.params)
    assert any(k.startswith("train.methods.pgd_at") for k in run.data.params)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "ingested" and inp.dataset.digest == dvc_md5(pipeline_run.dataset)[:36]
    assert "patient_id" in inp.dataset.schema and "source_sha256" not in inp.dataset.schema  # ids are pseudonyms
    commit = run.data.tags["mlflow.source.git.commit"]  # the tests run inside the repository
    assert len(commit.removesuffix("-dirty")) == 40


def test_training_keeps_the_best_robust_validation_epoch_and_says_which(pipeline_run):
    import json

    from mlflow import MlflowClient

    history = json.loads((pipeline_run.model / "history.json").read_text())
    chosen = json.loads((pipeline_run.model / "selection.json").read_text())
    scores = [e["val_select"] for e in history]
    assert chosen["epoch"] == max(i + 1 for i, s in enumerate(scores) if s == max(scores))
    assert chosen["by"].startswith("best robust validation accuracy: PGD-5 linf at ε=8/255")
    run_id = json.loads((pipeline_run.model / "run.json").read_text())["run_id"]
    tags = MlflowClient(tracking_uri=pipeline_run.tracking_uri).get_run(run_id).data.tags
    assert tags["medrobust.selected_epoch"] == str(chosen["epoch"]) and tags["medrobust.selected_by"] == chosen["by"]
