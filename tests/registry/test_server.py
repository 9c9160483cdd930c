"""The registry against a real ``mlflow server`` subprocess (REST API over a sqlite backend): the
promotion rules, rollback, forced promotion, and eight writers registering at once.

The production issue puts PostgreSQL behind the server; the client code is the same (REST), and the
promotion lease rests on the unique name of a registered model, which both backends enforce."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medrobust.registry import champion, evidence, versions
from medrobust.registry.versions import RegistryError
from medrobust.stages import register
from tests.conftest import tiny_gates, tiny_params, tiny_raw, tracking_store

NAME = "medrobust-classifier"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: Path, root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on ``db`` (on ``port``, default a free one); returns the process and its URI
    once ``/health`` answers."""
    port = port or _free_port()
    log = (root / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlflow server did not answer /health in 90 s")


@pytest.fixture
def server(pipeline_run, candidates, tmp_path, monkeypatch):
    """A real ``mlflow server`` over a copy of the session's store (version 1 is @champion)."""
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run.tracking_uri.removeprefix("sqlite:///"), db)
    proc, uri = start_server(db, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        yield MlflowClient(tracking_uri=uri)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _champion(client, name: str = NAME) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_promotion_challenger_rollback_and_forced_promote_over_rest(server, candidates, tmp_path):
    client = server
    assert client.tracking_uri.startswith("http://")
    # value gate failed: rejected, the champion stays
    c0, c1 = candidates
    robust = json.loads((c0.evaluation / "metrics.json").read_text())["headline"]["robust_accuracy"]["value"]
    d = register.run(tiny_params(register={"gates": tiny_gates(robust=min(1.0, robust + 0.01))}), c0.model,
                     c0.evaluation, tmp_path / "d0.json")
    assert d.status == "rejected" and _champion(client) == "1"
    # a pass that is not better than the champion (its clean accuracy raised past the tolerance)
    client.set_model_version_tag(NAME, "1", "gate.clean_accuracy.value", "1.0")
    d = register.run(tiny_params(), c1.model, c1.evaluation, tmp_path / "d1.json")
    assert d.status == "challenger" and _champion(client) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == d.version == "3"
    # a forced promotion records who and why; the gates are re-checked without --force
    with pytest.raises(RegistryError, match="fails clean_accuracy.change"):
        versions.promote(client, NAME, "3", tiny_params().register)
    versions.promote(client, NAME, "3", tiny_params().register, force=True, reason="sign-off, ticket 7")
    tags = client.get_model_version(NAME, "3").tags
    assert _champion(client) == "3" and tags["medrobust.promotion_reason"] == "sign-off, ticket 7"
    assert tags["medrobust.previous_champion"] == "1"
    # rollback restores the previous champion
    assert versions.rollback(client, NAME) == ("3", "1")
    assert _champion(client) == "1"
    # the lease is gone after every promotion
    assert not client.search_registered_models(f"name = '{champion.lease_name(NAME)}'")


WORKER = """
import json, sys
from medrobust.params import parse_params
from medrobust.stages import register
from medrobust.utils import setup_logging
setup_logging()
raw, model, evaluation, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
register.run(parse_params(raw), model, evaluation, out)
"""


def _constructed_candidates(pipeline_run, candidates, root: Path, n: int) -> list[tuple[Path, Path, float]]:
    """``n`` distinct trained models, each with an evaluation whose gate numbers are set to rank them.

    The models are trained for real (other seeds, one epoch); their evaluations are the first
    candidate's ``metrics.json`` with clean and robust accuracy set to ``0.50 + 0.05 i`` and
    ``0.30 + 0.05 i``, recorded as evidence in each run exactly as evaluate does. The real evaluate is
    tested elsewhere; here the numbers only have to order the writers.
    """
    import mlflow

    from medrobust.stages import train
    from medrobust.utils import sha256_file

    base = json.loads((candidates[0].evaluation / "metrics.json").read_text())
    out = []
    with tracking_store(pipeline_run.tracking_uri):
        for i in range(n):
            model, ev = root / f"m{i}", root / f"e{i}"
            train.run(tiny_params(seed=200 + i, train={"epochs": 1}), pipeline_run.dataset, model)
            m = json.loads(json.dumps(base))
            clean, robust = 0.50 + 0.05 * i, 0.30 + 0.05 * i
            m["clean"]["accuracy"]["value"] = m["headline"]["clean_accuracy"]["value"] = clean
            m["whitebox"]["pgd_linf"]["8/255"]["accuracy"]["value"] = robust
            m["headline"]["robust_accuracy"]["value"] = robust
            ev.mkdir()
            (ev / "metrics.json").write_text(json.dumps(m))
            proof = evidence.collect(sha256_file(model / "model.pt"), ev / "metrics.json",
                                     pipeline_run.dataset / "manifest.csv")
            run_id = json.loads((model / "run.json").read_text())["run_id"]
            with mlflow.start_run(run_id=run_id):
                mlflow.set_tags(proof.tags())
            out.append((model, ev, robust))
    return out


def test_eight_writers_at_once_leave_one_champion_the_rule_picks(pipeline_run, candidates, tmp_path):
    from mlflow import MlflowClient

    n, name = 8, "medrobust-concurrent"
    made = _constructed_candidates(pipeline_run, candidates, tmp_path, n)
    db = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run.tracking_uri.removeprefix("sqlite:///"), db)
    proc, uri = start_server(db, tmp_path)
    try:
        # no tolerance: the champion only ever moves up, so whatever the order, the best one ends champion;
        # the worst fails the robust floor
        raw = tiny_raw(register={"model_name": name, "gates": tiny_gates(robust=0.32, tolerance=0.0)})
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(raw), str(m), str(e),
                                   str(tmp_path / f"d{i}.json")], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, (m, e, _) in enumerate(made)]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
        client = MlflowClient(tracking_uri=uri)
        decisions = [json.loads((tmp_path / f"d{i}.json").read_text()) for i in range(n)]
        versions_ = client.search_model_versions(f"name='{name}'")
        assert len(versions_) == n and sorted(int(d["version"]) for d in decisions) == list(range(1, n + 1))
        final = _champion(client, name)
        assert final == decisions[n - 1]["version"]  # the best candidate
        assert decisions[0]["status"] == "rejected" and decisions[0]["failed_gates"][0] == "robust_accuracy"
        # the decisions agree with the registry: each version's status tag is its decision's
        by_version = {str(v.version): v for v in versions_}
        for d in decisions:
            assert by_version[d["version"]].tags["validation_status"] == d["validation_status"]
        # the promotions form one chain, each replacing the one before it (serialised, no lost update)
        chain = sorted((d for d in decisions if d["status"] == "champion"), key=lambda d: d["gates"][1]["value"])
        assert chain[-1]["version"] == final
        assert chain[0]["previous_champion"] is None
        for before, after in zip(chain, chain[1:]):
            assert after["previous_champion"] == before["version"]
        for d in decisions:
            if d["status"] == "challenger":
                assert set(d["failed_gates"]) <= {"clean_accuracy.change", "robust_accuracy.change"}
        assert not client.search_registered_models(f"name = '{champion.lease_name(name)}'")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
