"""``medrobust pipeline submit | schedule | runs`` against a stand-in for the Kubeflow Pipelines API.

There is no Kubernetes cluster (and so no KFP API server) on this machine. The stand-in below is a
real HTTP server on 127.0.0.1 that answers the v2beta1 REST endpoints ``kfp.Client`` calls
(healthz, experiments, runs, recurring runs) the way the KFP API does, and records every request.
The tests check what the real ``kfp.Client`` sends through the project's commands: the compiled
pipeline spec, the params as the run's ``params_yaml`` input, the cron schedule and
``max_concurrency``, the bearer token; and how the commands read the answers (a failed run exits 1).
It cannot show that a cluster accepts and runs the pipeline: the spec's own validity is tested by
strict proto parsing and kfp.local (``test_dag.py``, ``test_local.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.pipelines.remote import RemoteError
from tests.conftest import REPO

PACKAGE = REPO / "pipelines" / "medrobust_pipeline.yaml"
API = "/apis/v2beta1"


class StandInKFP(ThreadingHTTPServer):
    """State of the stand-in API: experiments, runs (with their scripted states) and every request seen."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.final_state = "SUCCEEDED"
        self.token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["method"] == method and r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: StandInKFP

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        query = urllib.parse.parse_qs(url.query)
        s = self.server
        s.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                           "auth": self.headers.get("Authorization")})
        if s.token and self.headers.get("Authorization") != f"Bearer {s.token}":
            return self._reply(401, {"error": "unauthenticated", "code": 16})
        route = url.path.removeprefix(API)
        if method == "GET" and route == "/healthz":
            return self._reply(200, {"multi_user": False})
        if route == "/experiments":
            if method == "POST":
                exp = {**body, "experiment_id": f"exp-{len(s.experiments) + 1}", "created_at": "2026-12-02T00:00:00Z"}
                s.experiments[exp["experiment_id"]] = exp
                return self._reply(200, exp)
            wanted = [p.get("string_value", p.get("stringValue")) for p in json.loads(query.get("filter", ["{}"])[0]).get("predicates", [])]
            found = [e for e in s.experiments.values() if not wanted or e["display_name"] in wanted]
            return self._reply(200, {"experiments": found, "total_size": len(found)})
        if route == "/runs":
            if method == "POST":
                run = {**body, "run_id": f"run-{len(s.runs) + 1}", "state": "PENDING",
                       "created_at": f"2026-12-02T00:00:0{len(s.runs)}Z", "_polls": 0}
                s.runs[run["run_id"]] = run
                return self._reply(200, {k: v for k, v in run.items() if not k.startswith("_")})
            runs = sorted(s.runs.values(), key=lambda r: r["created_at"], reverse=True)
            if "experiment_id" in query:
                runs = [r for r in runs if r["experiment_id"] == query["experiment_id"][0]]
            page = int(query.get("page_size", ["20"])[0])
            return self._reply(200, {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs[:page]],
                                     "total_size": len(runs)})
        if method == "GET" and route.startswith("/runs/"):
            run = s.runs[route.removeprefix("/runs/")]
            run["_polls"] += 1
            run["state"] = "RUNNING" if run["_polls"] < 3 else s.final_state
            return self._reply(200, {k: v for k, v in run.items() if not k.startswith("_")})
        if method == "POST" and route == "/recurringruns":
            job = {**body, "recurring_run_id": f"rr-{len(s.recurring) + 1}", "status": "ENABLED"}
            s.recurring[job["recurring_run_id"]] = job
            return self._reply(200, job)
        return self._reply(404, {"error": f"no route {method} {url.path}"})

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


@pytest.fixture
def kfp_api() -> Iterator[StandInKFP]:
    server = StandInKFP()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    # each invocation gets fresh streams: drop a handler an earlier invocation left on its closed stderr
    logging.getLogger().handlers.clear()
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def _answer(result: Any) -> str:
    """The command's own answer: its last line that is a run or recurring-run ID (logs come before it)."""
    return [line for line in result.output.splitlines() if re.match(r"^(run|rr)-\d+", line)][-1]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("epochs: 15", "epochs: 3"))
    assert "epochs: 3" in path.read_text()
    return path


def test_submit_sends_the_compiled_spec_and_the_params_then_waits_for_the_outcome(kfp_api, params_file):
    kfp_api.token = "s3cr3t-token"
    args = ["pipeline", "submit", "--host", kfp_api.url, "--params", str(params_file), "--package", str(PACKAGE),
            "--experiment", "nightly", "--run-name", "ci-42", "--wait", "--poll", "0.05"]
    result = _cli(*args, env={"KFP_TOKEN": "s3cr3t-token"})
    assert result.exit_code == 0, result.output
    assert _answer(result) == "run-1 SUCCEEDED"
    assert {r["auth"] for r in kfp_api.requests} == {"Bearer s3cr3t-token"}
    # the experiment is made once by name, and the run belongs to it
    (exp,) = kfp_api.bodies("POST", f"{API}/experiments")
    assert exp["display_name"] == "nightly"
    (run,) = kfp_api.bodies("POST", f"{API}/runs")
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "ci-42"
    # the compiled pipeline spec as committed, with this params file as the run's input
    # (a package with a platform spec, here the GPU selector, tolerations and secrets, travels as both parts)
    spec, platform = list(yaml.safe_load_all(PACKAGE.read_text()))
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    assert "kubernetes" in platform["platforms"]
    assert run["runtime_config"]["parameters"] == {"params_yaml": params_file.read_text()}
    # --wait polled the run until its final state
    assert len([r for r in kfp_api.requests if r["path"] == f"{API}/runs/run-1"]) == 3


def test_submit_wait_exits_1_when_the_run_fails_and_a_refused_token_is_a_clear_error(kfp_api, params_file):
    kfp_api.final_state = "FAILED"
    result = _cli("pipeline", "submit", "--host", kfp_api.url, "--params", str(params_file), "--package", str(PACKAGE),
                  "--wait", "--poll", "0.05")
    assert result.exit_code == 1 and "run-1 FAILED" in result.output
    # without --wait the command returns at once with the run's ID
    result = _cli("pipeline", "submit", "--host", kfp_api.url, "--params", str(params_file), "--package", str(PACKAGE))
    assert result.exit_code == 0 and _answer(result) == "run-2 PENDING"
    assert not [r for r in kfp_api.requests if r["path"] == f"{API}/runs/run-2"]


def test_a_refused_token_exits_2_naming_the_host_and_the_token_variable(kfp_api, params_file):
    kfp_api.token = "right"
    proc = subprocess.run([sys.executable, "-m", "medrobust.cli", "pipeline", "submit", "--host", kfp_api.url,
                           "--params", str(params_file), "--package", str(PACKAGE), "--namespace", "medrobust"],
                          capture_output=True, text=True, env={**os.environ, "KFP_TOKEN": "wrong"},
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert kfp_api.url in proc.stderr and "KFP_TOKEN" in proc.stderr and "HTTP 401" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_schedule_creates_a_cron_recurring_run_with_max_concurrency(kfp_api, params_file):
    result = _cli("pipeline", "schedule", "--host", kfp_api.url, "--params", str(params_file), "--package", str(PACKAGE),
                  "--cron", "0 0 2 * * *", "--max-concurrency", "1", "--name", "medrobust-nightly")
    assert result.exit_code == 0, result.output
    assert _answer(result) == "rr-1"
    (job,) = kfp_api.bodies("POST", f"{API}/recurringruns")
    assert job["display_name"] == "medrobust-nightly" and job["experiment_id"] == "exp-1"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"] == {"params_yaml": params_file.read_text()}
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "medrobust"
    # a 5-field (Unix) cron is refused before anything is sent (the CLI's main() makes it exit 2, no traceback)
    n = len(kfp_api.requests)
    with pytest.raises(RemoteError, match="6 fields, seconds first"):
        _cli("pipeline", "schedule", "--host", kfp_api.url, "--params", str(params_file), "--package", str(PACKAGE),
             "--cron", "0 2 * * *")
    assert len(kfp_api.requests) == n


def test_runs_lists_the_latest_runs_newest_first(kfp_api, params_file):
    for _ in range(3):
        assert _cli("pipeline", "submit", "--host", kfp_api.url, "--params", str(params_file),
                    "--package", str(PACKAGE)).exit_code == 0
    result = _cli("pipeline", "runs", "--host", kfp_api.url, "--limit", "2")
    assert result.exit_code == 0, result.output
    ids = [line.split()[0] for line in result.output.strip().splitlines() if line.startswith("run-")]
    assert ids == ["run-3", "run-2"]
    listed = [r for r in kfp_api.requests if r["method"] == "GET" and r["path"] == f"{API}/runs"]
    assert listed[-1]["query"]["page_size"] == ["2"] and listed[-1]["query"]["sort_by"] == ["created_at desc"]
