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
