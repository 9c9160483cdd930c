"""Shared fixtures: tiny params, and one real run of every stage (real MLflow sqlite registry)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medrobust.params import Params, parse_params

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
    "train": {"method": "pgd_at", "epochs": 2, "clean_warmup_epochs": 0, "model": {"width": 4},
              "methods": {"pgd_at": {"steps": 2, "warmup_epochs": 1}}},
    "evaluate": {"attacks": [{"name": "fgsm", "norm": "linf", "eps": ["4/255", "8/255"]},
                             {"name": "pgd", "norm": "linf", "eps": ["4/255", "8/255"], "steps": 3},
                             {"name": "autoattack", "norm": "linf", "eps": ["8/255"], "steps": 5, "n_queries": 20}],
                 "masking": {"n_points": 16, "square_queries": 20},
                 "shifts": {"severities": [1, 5]},
                 "certify": {"n0": 20, "n": 200, "max_images": 16, "radii": [0.0, 0.1, 0.25, 0.5], "gate_radius": 0.1,
                             "soundness": {"steps": 3, "samples": 4, "max_points": 6}}},
    "register": {"gate_attack": "pgd_linf", "gate_eps": "8/255", "require_masking_checks": False,
                 "gates": None},  # tiny_gates()
}


def tiny_gates(clean: float = 0.0, robust: float = 0.0, tolerance: float | None = 0.02,
               use: str = "value") -> list[dict[str, Any]]:
    """The tiny runs' gates: clean and robust accuracy (at the gate), each with a change threshold."""
    return [{"name": "clean_accuracy", "metric": "clean.accuracy", "lower_bound": clean, "max_regression": tolerance},
            {"name": "robust_accuracy", "metric": "{gate}.accuracy", "lower_bound": robust, "use": use,
             "max_regression": tolerance}]


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
    raw["register"]["gates"] = tiny_gates()
    merge(raw, copy.deepcopy(overrides))
    return raw


def leaves(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys of a nested mapping's leaves (an empty mapping is a leaf): one `dvc exp show` column each."""
    out: set[str] = set()
    for key, value in tree.items():
        out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return out


def tiny_params(**overrides: Any) -> Params:
    return parse_params(tiny_raw(**overrides))


def build_from_params(params: Params, method: str, split: Any, device: str = "cpu") -> Any:
    """``medrobust.training.build_method`` with everything taken from ``params`` (as the train stage does)."""
    from medrobust.training import build_method

    return build_method(params.train, method, split, len(params.data.classes), params.data.image_size,
                        seed=params.seed, device=device)


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


@contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """``$MLFLOW_TRACKING_URI`` set to ``uri`` inside the block, restored (or removed) after it."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """Every stage, once, on tiny synthetic data, against a real sqlite-backed MLflow registry."""
    from medrobust.stages import advgen, evaluate, ingest, register, synthesize, train

    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with tracking_store(uri):
        p = tiny_params()
        run = PipelineRun(root, p, root / "raw", root / "ingested", root / "advgen", root / "model",
                          root / "evaluation", root / "decision.json", uri)
        synthesize.run(p, run.raw)
        ingest.run(p, run.dataset, run.raw / "dicom", run.raw / "labels.csv")
        advgen.run(p, run.dataset, run.advgen)
        train.run(p, run.dataset, run.model)
        evaluate.run(p, run.dataset, run.model, run.advgen, run.evaluation)
        register.run(p, run.model, run.evaluation, run.decision, run.dataset)
    return run


# --------------------------------------------------------------------------------------------------
# a small CNN trained on a toy task the attacks can break (attack and masking tests)
# --------------------------------------------------------------------------------------------------
def toy_task(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; class 1 carries a faint bright square."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, 4:10, 4:10] += 0.15
    return x.clamp(0, 1), y


@pytest.fixture(scope="session")
def trained():
    """(model, x_test, y_test): a standard small CNN with clean accuracy 1.0 and little robustness."""
    from medrobust.training import OptimConfig
    from medrobust.data.shards import ArraySplit
    from medrobust.defenses import get_method
    from medrobust.models import ModelSpec, build_model
    from medrobust.training import train_model

    x, y = toy_task()
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=8, image_size=16))
    train_model(model, get_method("standard"), ArraySplit(x[:192], y[:192], manifest=None), None, epochs=15,
                batch_size=32, optim=OptimConfig(lr=3e-3), seed=0)
    model.eval()
    return model, x[192:], y[192:]
