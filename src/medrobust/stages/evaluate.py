"""Stage 4 — evaluate: clean, white-box and transfer robustness of the trained model, and its gates.

The numbers come from :func:`medrobust.evaluation.suite.evaluate_model` (clean accuracy and AUC,
every attack of ``evaluate.attacks``, the gradient-masking checks, natural shifts, the advgen
transfer sets); the absolute gates of ``register.gates`` are computed once, here
(:func:`medrobust.registry.gates.check_gates`), and are part of the result (the Kubeflow DAG
branches on them).

Outputs (in ``out_dir``, written atomically): ``metrics.json`` (DVC metrics), ``robustness.csv``
(DVC plot data), ``robustness.png``, ``shifts.png``, ``report.md``, ``gates.json`` and
``timing.json``. All of them, and the metrics, go to the train stage's MLflow run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medrobust.evaluation.plots import plot_robustness, plot_shifts
from medrobust.evaluation.report import markdown_report
from medrobust.evaluation.suite import curves, evaluate_model, mlflow_metrics, robustness_rows
from medrobust.models import load_model
from medrobust.params import Params
from medrobust.registry import tracking
from medrobust.registry.gates import GateReport, check_gates
from medrobust.utils import atomic_output_dir, read_json, resolve_device, seed_everything, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """What evaluate wrote and found: every metric, and the gates computed from them.

    Attributes:
        out_dir: the stage's output folder.
        metrics: the content of ``metrics.json``.
        gates: the absolute gates (:func:`medrobust.registry.gates.check_gates`).
    """

    out_dir: Path
    metrics: dict[str, Any]
    gates: GateReport

    @property
    def passes_gates(self) -> bool:
        """Every absolute gate passed (the champion comparison comes at registration)."""
        return self.gates.passed

    @property
    def clean_accuracy(self) -> float:
        """Clean test accuracy."""
        return self.gates.clean_accuracy

    @property
    def clean_auc(self) -> float:
        """Clean test ROC AUC (NaN when the test split holds a single class)."""
        return float(self.metrics["clean"]["auc"])

    @property
    def gate_robust_accuracy(self) -> float:
        """Robust accuracy of the gate attack at the gate ε."""
        return self.gates.robust_accuracy

    @property
    def report(self) -> Path:
        """``report.md``."""
        return self.out_dir / "report.md"


def run(
    params: Params, dataset_dir: str | Path, model_dir: str | Path, advgen_dir: str | Path | None, out_dir: str | Path
) -> EvaluateResult:
    """Evaluate the model in ``model_dir``, check the gates, and log everything to its MLflow run.

    Args:
        params: validated params (``evaluate``, ``register.gates``, ``seed``, ``device``, ``mlflow``).
        dataset_dir: the ingest stage's output.
        model_dir: the train stage's output.
        advgen_dir: the advgen stage's output (transfer sets), or None.
        out_dir: the stage's output folder (replaced atomically on success).

    Returns:
        The metrics and the gate report.

    Raises:
        KeyError: the evaluation lacks the gate attack at the gate ε (params.yaml's check prevents it).
    """
    import mlflow

    seed_everything(params.seed)
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    model, _ = load_model(model_dir)
    model = model.to(resolve_device(params.device))
    run_info = read_json(model_dir / "run.json")
    g = params.register.gates
    metrics, seconds = evaluate_model(params.evaluate, model, dataset_dir, Path(advgen_dir) if advgen_dir else None,
                                      gate_eps=g.gate_eps, seed=params.seed)
    gates = check_gates(metrics, g)
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "timing.json", {"seconds": seconds, "early_stop": params.evaluate.early_stop})
        pd.DataFrame(robustness_rows(metrics)).to_csv(tmp / "robustness.csv", index=False)
        plot_robustness(curves(metrics["whitebox"]), curves(metrics["transfer"]), metrics["clean"]["accuracy"],
                        tmp / "robustness.png", title=f"{run_info.get('method')} / {run_info.get('backbone')}",
                        gate=(g.gate_eps, g.min_robust_accuracy))
        if metrics.get("shifts"):
            plot_shifts(metrics["shifts"], metrics["clean"]["accuracy"], tmp / "shifts.png")
        write_json(tmp / "gates.json", gates.to_dict())
        (tmp / "report.md").write_text(markdown_report(metrics, gates.results, run_info))
        tracking.configure(params.mlflow)
        with mlflow.start_run(run_id=run_info["run_id"]):
            mlflow.log_metrics(mlflow_metrics(metrics))
            mlflow.set_tag("medrobust.gates_passed", str(gates.passed).lower())
            mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
    log.info("evaluate: clean accuracy %.3f, gates %s", metrics["clean"]["accuracy"],
             "passed" if gates.passed else "FAILED")
    return EvaluateResult(Path(out_dir), metrics, gates)
