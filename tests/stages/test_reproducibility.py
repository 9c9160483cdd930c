"""Same params, same results: ingest, advgen, train and evaluate are seeded from params.yaml."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medrobust.stages import advgen, evaluate, ingest, train


def test_rerun_gives_identical_outputs_and_metrics(pipeline_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    p = pipeline_run.params
    ingest.run(p, tmp_path / "ingested", pipeline_run.raw / "dicom", pipeline_run.raw / "labels.csv")
    a = pd.read_csv(pipeline_run.dataset / "manifest.csv")
    b = pd.read_csv(tmp_path / "ingested" / "manifest.csv")
    pd.testing.assert_frame_equal(a, b)
    for shard in sorted(set(a["shard"])):
        np.testing.assert_array_equal(np.load(pipeline_run.dataset / shard), np.load(tmp_path / "ingested" / shard))
    advgen.run(p, tmp_path / "ingested", tmp_path / "advgen")
    train.run(p, tmp_path / "ingested", tmp_path / "model")
    evaluate.run(p, tmp_path / "ingested", tmp_path / "model", tmp_path / "advgen", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(
        (pipeline_run.evaluation / "metrics.json").read_text())
    assert json.loads((tmp_path / "advgen" / "advgen.json").read_text())["surrogate_accuracy"] == json.loads(
        (pipeline_run.advgen / "advgen.json").read_text())["surrogate_accuracy"]
