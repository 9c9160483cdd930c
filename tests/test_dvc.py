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
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")  # the plot templates

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
    assert 0 <= values["clean"]["accuracy"]["value"] <= 1 and "pgd_linf" in values["whitebox"]
    # every figure has its CI; DVC drops lists, so the bounds are also the scalars ci_low and ci_high
    acc = values["clean"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and acc["n"] == values["n_test"]
    written = json.loads((tmp_path / "reports/evaluation/metrics.json").read_text())["clean"]["accuracy"]
    assert written["ci"] == [acc["ci_low"], acc["ci_high"]]

    table = _dvc(tmp_path, "metrics", "show").stdout  # the flat view a terminal shows
    assert "clean.accuracy.value" in table and "clean.accuracy.ci_low" in table and "clean.accuracy.ci_high" in table

    plots = json.loads(_dvc(tmp_path, "plots", "show", "--json").stdout)["data"]
    curves = {k: v[0]["content"] for k, v in plots.items() if v[0]["type"] == "vega"}
    assert len(curves) == 4 and sum(k.endswith(".png") for k in plots) == 5
    for spec in curves.values():
        rows = spec["data"]["values"]
        assert rows and all("series" in r for r in rows) and spec["encoding"]["color"]["field"] == "series"
    robust = next(s for k, s in curves.items() if k.startswith("robust accuracy vs epsilon"))
    assert {r["series"] for r in robust["data"]["values"]} >= {"pgd_linf", "worst_case_linf"}
    assert all(float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) for r in robust["data"]["values"])

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
