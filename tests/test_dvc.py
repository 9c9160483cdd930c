"""The DVC pipeline, run for real with `dvc repro` on tiny data: outputs, metrics, and caching."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_raw, write_params

BIN = Path(sys.executable).parent


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.integration
def test_dvc_repro_runs_every_stage_then_only_what_changed(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "src").symlink_to(REPO / "src")  # dvc.yaml depends on the stage sources
    raw = tiny_raw()
    write_params(tmp_path / "params.yaml", raw)
    assert _dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0

    first = _dvc(tmp_path, "repro")
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("synthesize", "ingest", "advgen", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    for out in ("data/ingested/manifest.csv", "data/ingested/validation.json", "data/advgen/manifest.csv",
                "models/classifier/model.pt", "models/classifier/checkpoints/epoch_002.pt",
                "reports/evaluation/metrics.json", "reports/evaluation/robustness.png",
                "reports/evaluation/report.md", "reports/decision.json", "dvc.lock"):
        assert (tmp_path / out).exists(), out

    shown = _dvc(tmp_path, "metrics", "show", "--json")
    metrics = json.loads(shown.stdout)
    (entry,) = metrics.values()
    values = entry["data"]["reports/evaluation/metrics.json"]["data"]
    assert 0 <= values["clean"]["accuracy"] <= 1 and "pgd_linf" in values["whitebox"]

    again = _dvc(tmp_path, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout

    raw["register"]["model_name"] = "medrobust-other"  # only the register stage reads it
    write_params(tmp_path / "params.yaml", raw)
    third = _dvc(tmp_path, "repro")
    assert third.returncode == 0, third.stderr[-3000:]
    ran = {line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"register"}
    decision = json.loads((tmp_path / "reports/decision.json").read_text())
    assert decision["model_name"] == "medrobust-other" and decision["version"] == "1"
