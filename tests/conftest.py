"""Shared fixtures: tiny params, and one real run of every stage (real MLflow sqlite registry)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from medrobust.config import Params, parse_params

REPO = Path(__file__).resolve().parents[1]

#: small enough for seconds per stage on 2 cores, large enough for every split and class
TINY: dict[str, Any] = {
    "seed": 7,
    "data": {
        "image_size": 32,
        "shard_size": 16,
        "synthetic": {"n_patients": 24, "images_per_patient_min": 2, "images_per_patient_max": 3,
                      "image_size": 64, "monochrome1_fraction": 0.4, "seed": 99},
    },
    "validation": {"min_class_fraction": 0.05, "max_class_fraction": 0.95, "min_images_per_split": 3},
    "advgen": {
        "surrogate": {"epochs": 1, "model": {"width": 4}},
        "attacks": [{"name": "fgsm", "norm": "linf", "eps": ["8/255"]},
                    {"name": "pgd", "norm": "linf", "eps": ["8/255"], "steps": 2}],
    },
    "train": {"method": "pgd_at", "epochs": 2, "model": {"width": 4},
              "methods": {"pgd_at": {"steps": 2, "warmup_epochs": 1}}},
    "evaluate": {"attacks": [{"name": "fgsm", "norm": "linf", "eps": ["4/255", "8/255"]},
                             {"name": "pgd", "norm": "linf", "eps": ["4/255", "8/255"], "steps": 3}]},
    "register": {"gates": {"min_clean_accuracy": 0.0, "min_robust_accuracy": 0.0, "gate_attack": "pgd_linf",
                           "gate_eps": "8/255"}},
}


def tiny_raw(**overrides: Any) -> dict[str, Any]:
    """The repository's params.yaml with :data:`TINY` and then ``overrides`` merged in."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(raw, copy.deepcopy(TINY))
    merge(raw, copy.deepcopy(overrides))
    return raw


def tiny_params(**overrides: Any) -> Params:
    return parse_params(tiny_raw(**overrides))


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(autouse=True, scope="session")
def _pseudonym_key() -> None:
    os.environ.setdefault("MEDROBUST_PSEUDONYM_KEY", "test-only-key-0123456789abcdef")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@dataclass
class PipelineRun:
    root: Path
    params: Params
    raw: Path
    dataset: Path
    advgen: Path
    model: Path
    evaluation: Path
    decision: Path
    tracking_uri: str


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """Every stage, once, on tiny synthetic data, against a real sqlite-backed MLflow registry."""
    from medrobust.stages import advgen, evaluate, ingest, register, synthesize, train

    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        p = tiny_params()
        run = PipelineRun(root, p, root / "raw", root / "ingested", root / "advgen", root / "model",
                          root / "evaluation", root / "decision.json", uri)
        synthesize.run(p, run.raw)
        ingest.run(p, run.dataset, run.raw / "dicom", run.raw / "labels.csv")
        advgen.run(p, run.dataset, run.advgen)
        train.run(p, run.dataset, run.model)
        evaluate.run(p, run.dataset, run.model, run.advgen, run.evaluation)
        register.run(p, run.model, run.evaluation, run.decision)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return run
