"""The ``mlflow server`` killed in the middle of a training run (issue 14): the stage waits a
bounded time, stops with one message that names the server, marks nothing complete, and after a
restart of the server on the same store the next run finishes and fails the interrupted one.

Real processes: the server is ``mlflow server`` over sqlite, killed with SIGKILL; the stage is the
``medrobust train`` command line in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from tests.conftest import REPO, tiny_raw
from tests.registry.test_server import _free_port, start_server

# the CLI, with one hook: after the first epoch's metrics reach the server, say so and pause, so
# the server can be killed while the run is open
_CHILD = r"""
import sys, time
import mlflow
from medrobust import cli

real, pause = mlflow.log_metrics, float(sys.argv[1])
def first_epoch_then_wait(*args, **kwargs):
    real(*args, **kwargs)
    if not getattr(first_epoch_then_wait, "done", False):
        first_epoch_then_wait.done = True
        print("EPOCH", flush=True)
        time.sleep(pause)
mlflow.log_metrics = first_epoch_then_wait
sys.argv = ["medrobust", "train", "--params", sys.argv[2], "--dataset", sys.argv[3], "--out", sys.argv[4]]
cli.main()
"""


def _train(params, dataset, out, uri, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(name, None)  # the params' bounds, not a leftover of the test process
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(pause), str(params), str(dataset), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent, env=env)


def test_the_tracking_server_killed_mid_run_stops_the_stage_clearly_and_a_restart_resumes(pipeline_run, tmp_path):
    from mlflow import MlflowClient

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(train={"epochs": 3}, mlflow={"http_retries": 2, "http_backoff": 1})))
    db, port = tmp_path / "server.db", _free_port()
    server, uri = start_server(db, tmp_path, port)
    out = tmp_path / "model"
    child = _train(params, pipeline_run.dataset, out, uri, pause=3)
    try:
        assert child.stdout.readline().strip() == "EPOCH", child.stderr.read()
        os.killpg(server.pid, signal.SIGKILL)  # the server dies with the run open
        server.wait(timeout=30)
        killed_at = time.monotonic()
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    waited = time.monotonic() - killed_at
    assert child.returncode == 2, stderr[-3000:]
    assert f"the MLflow tracking server at {uri} did not answer (2 retries with backoff)" in stderr
    assert "Traceback" not in stderr
    assert waited < 60  # bounded: MLflow's own defaults (7 retries, factor 2) wait minutes
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

    # the server comes back on the same port and store: the next run finishes and fails the open one
    server, _ = start_server(db, tmp_path, port)
    try:
        client = MlflowClient(tracking_uri=uri)
        (stuck,) = client.search_runs([client.get_experiment_by_name("medrobust").experiment_id])
        assert stuck.info.status == "RUNNING"
        again = _train(params, pipeline_run.dataset, out, uri, pause=0)
        stdout, stderr = again.communicate(timeout=300)
        assert again.returncode == 0, stderr[-3000:]
        assert (out / "model.pt").is_file()
        runs = {r.info.run_id: r.info.status for r in client.search_runs([stuck.info.experiment_id])}
        assert runs.pop(stuck.info.run_id) == "FAILED" and list(runs.values()) == ["FINISHED"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
