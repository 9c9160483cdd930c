"""Stage 4 — evaluate: clinical metrics with confidence intervals, under every attack and shift, and the gates.

The numbers come from :func:`medrobust.evaluation.suite.evaluate_model`: the operating point and
the temperature fitted on the validation split, then on the test split, clean and for every attack ×
ε, the worst case over the suite, every shift × severity and every transfer set: accuracy, balanced
accuracy, sensitivity, specificity, PPV, NPV, ROC and PR AUC, Brier score, ECE and the attack
success rate, each ``{"value", "ci", "n"}``; the attack-induced false-negative rate, the
gradient-masking checks, the MedMNIST-C shift summary and the slices. The absolute gates of
``register.gates`` are computed once, here (:func:`medrobust.registry.gates.check_gates`), and are
part of the result (the Kubeflow DAG branches on them).

Outputs (in ``out_dir``, written atomically): ``metrics.json`` (DVC metrics), ``calibration.json``
(the temperature and operating point, stored with the model's MLflow run too), the DVC plot data
``robustness.csv``, ``shifts.csv``, ``roc.csv``, ``reliability.csv`` and ``certified.csv`` (certified
accuracy against the L2 radius, ``evaluate.certify``), the figures ``robustness.png``, ``shifts.png``,
``reliability.png``, ``roc.png``, ``certified.png`` and ``saliency.png``,
``report.html`` (one self-contained page), ``report.md`` (the summary), ``model_card.md``,
``gates.json``, ``timing.json`` and ``evidence.json`` (the SHA-256 of the evaluated ``model.pt``, of
``metrics.json`` and of the dataset manifest, also tagged on the run: :mod:`medrobust.registry.evidence`).
All of them, and the metrics, go to the train stage's MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrobust.config import eps_label
from medrobust.data.shards import load_split
from medrobust.evaluation import fanout
from medrobust.evaluation.certified import certified_accuracy, certified_rows, plot_certified
from medrobust.evaluation.calibration import softmax
from medrobust.evaluation.clinical import ECE_BINS
from medrobust.evaluation.model_card import build_model_card, provenance
from medrobust.evaluation.plots import plot_reliability, plot_robustness, plot_roc, plot_shifts
from medrobust.evaluation.report import build_report, summary
from medrobust.evaluation.saliency import saliency_grid
from medrobust.evaluation.suite import Evaluation, evaluate_model
from medrobust.evaluation.tables import mlflow_metrics, reliability_rows, robustness_rows, roc_rows, shift_rows
from medrobust.models import load_model
from medrobust.params import Params
from medrobust.registry import evidence, tracking
from medrobust.registry.gates import GateReport, GatesConfig, check_gates
from medrobust.utils import (atomic_output_dir, read_json, resolve_device, seed_everything, sha256_file, write_csv,
                             write_json)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """What evaluate wrote and found: every metric, and the gates computed from them."""

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
        return float(self.metrics["headline"]["clean_accuracy"]["value"])

    @property
    def clean_auc(self) -> float:
        """Clean test ROC AUC (NaN when undefined)."""
        value = self.metrics["clean"]["roc_auc"]["value"]
        return float("nan") if value is None else float(value)

    @property
    def gate_robust_accuracy(self) -> float:
        """Robust accuracy of the gate attack (by default the worst case over the suite) at the gate ε."""
        return float(self.metrics["headline"]["robust_accuracy"]["value"])

    @property
    def report(self) -> Path:
        """``report.md``."""
        return self.out_dir / "report.md"


def _robust_floor(g: GatesConfig) -> float | None:
    """The lower bound of the gate on ``{gate}.accuracy`` (the line on the robustness plot), if any."""
    return next((s.lower_bound for s in g.gates if s.metric in ("{gate}.accuracy", f"{g.gate_path}.accuracy")), None)


def suite_fingerprint(params: Params) -> dict[str, Any]:
    """What a champion comparison must share: the attacks, the shifts, the masking checks, the certificates
    (all but their batch size, which changes the cost and not the meaning) and the gate."""
    ev = params.evaluate
    suite = {"attacks": [a.model_dump(mode="json") for a in ev.attacks],
             "shifts": ev.shifts.model_dump(mode="json"), "masking": ev.masking.model_dump(mode="json"),
             "certify": ev.certify.model_dump(mode="json", exclude={"batch_size"}),
             "gate_attack": params.register.gate_attack, "gate_eps": eps_label(params.register.gate_eps)}
    blob = json.dumps(suite, sort_keys=True, separators=(",", ":")).encode()
    return {"sha256": hashlib.sha256(blob).hexdigest(), "attacks": [a.key for a in ev.attacks]}


def headline(metrics: dict[str, Any], gates: GateReport) -> dict[str, Any]:
    """``headline.json``: the handful of numbers ``dvc exp show`` compares experiments by.

    Clean and gate robust accuracy with the robust CI's bounds, the test-set size, and whether every
    value gate passed (1/0). ``metrics.json`` holds everything else.
    """
    h = metrics["headline"]
    return {"clean_accuracy": h["clean_accuracy"]["value"], "robust_accuracy": h["robust_accuracy"]["value"],
            "robust_ci_low": h["robust_accuracy"]["ci_low"], "robust_ci_high": h["robust_accuracy"]["ci_high"],
            "n_test": h["n_test"], "gates_passed": int(gates.passed)}


def _figures(ev: Evaluation, params: Params, run_info: dict[str, Any], tmp: Path) -> list[str]:
    """Write the plot data and the figures; returns the PNG files written."""
    metrics, g, y = ev.metrics, params.register, ev.y
    write_csv(pd.DataFrame(robustness_rows(metrics)), tmp / "robustness.csv")
    floor = _robust_floor(g)
    plot_robustness(metrics, tmp / "robustness.png", title=f"{run_info.get('method')} / {run_info.get('backbone')}",
                    gate=None if floor is None else (g.gate_eps, floor))
    images = ["robustness.png"]
    if metrics.get("shifts"):
        write_csv(pd.DataFrame(shift_rows(metrics)), tmp / "shifts.csv")
        plot_shifts(metrics, tmp / "shifts.png")
        images.append("shifts.png")
    raw, calibrated = softmax(ev.clean.logits), ev.calibration.probabilities(ev.clean.logits)
    write_csv(pd.DataFrame(reliability_rows(y, raw, calibrated, ECE_BINS)), tmp / "reliability.csv")
    plot_reliability(y, raw, calibrated, ECE_BINS, ev.calibration.temperature, tmp / "reliability.png")
    images.append("reliability.png")
    if calibrated.shape[1] == 2 and len(np.unique(y)) == 2:
        curves = {"clean": calibrated[:, 1]}
        if ev.gate is not None:
            curves[f"{g.gate_attack} at ε={metrics['headline']['gate_eps']}"] = \
                ev.calibration.probabilities(ev.gate.logits)[:, 1]
        write_csv(pd.DataFrame(roc_rows(y, curves)), tmp / "roc.csv")
        plot_roc(y, curves, ev.calibration.threshold, tmp / "roc.png")
        images.append("roc.png")
    if metrics.get("certified"):
        write_csv(pd.DataFrame(certified_rows(metrics)), tmp / "certified.csv")
        plot_certified(metrics, tmp / "certified.png")
        images.append("certified.png")
    cfg = params.evaluate.saliency
    if cfg.enabled and ev.gate is not None and ev.strongest is not None and ev.test is not None:
        model = ev.extras["model"]
        if saliency_grid(model, ev.test.x, ev.test.y, ev.gate.robust, ev.gate.clean_correct, ev.strongest, g.gate_eps,
                         params.seed, cfg.n_images, tuple(params.data.classes), tmp / "saliency.png"):
            images.append("saliency.png")
    return images


def run_attack(params: Params, dataset_dir: str | Path, model_dir: str | Path, attack_key: str,
               out_dir: str | Path) -> Path:
    """One entry of ``evaluate.attacks`` on the test split, at every ε: an attack run for :func:`run` to merge.

    The Kubeflow pipeline runs one of these per attack side by side (``dsl.ParallelFor``); the result is
    bound to the model and dataset by their SHA-256 (:mod:`medrobust.evaluation.fanout`).

    Args:
        params: validated params (``evaluate``, ``seed``, ``device``).
        dataset_dir: the ingest stage's output.
        model_dir: the train stage's output.
        attack_key: ``<name>_<norm>`` of an entry of ``evaluate.attacks``.
        out_dir: the attack run's folder (replaced atomically on success).

    Returns:
        ``out_dir``.

    Raises:
        KeyError: ``attack_key`` is not in ``evaluate.attacks``.
    """
    specs = {a.key: a for a in params.evaluate.attacks}
    if attack_key not in specs:
        raise KeyError(f"attack {attack_key!r} is not in evaluate.attacks ({', '.join(specs)})")
    seed_everything(params.seed)
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    model_sha256 = sha256_file(model_dir / "model.pt")
    model = load_model(model_dir)[0].to(resolve_device(params.device))
    test, cfg = load_split(dataset_dir, "test"), params.evaluate
    conditions = fanout.run_attack(model, specs[attack_key], test.x, test.y, cfg.batch_size, cfg.early_stop,
                                   params.seed)
    with atomic_output_dir(out_dir) as tmp:
        fanout.save(tmp, specs[attack_key], conditions, seed=params.seed, early_stop=cfg.early_stop,
                    model_sha256=model_sha256, dataset_sha256=sha256_file(dataset_dir / "manifest.csv"))
    return Path(out_dir)


def run(
    params: Params, dataset_dir: str | Path, model_dir: str | Path, advgen_dir: str | Path | None, out_dir: str | Path,
    attack_runs: Sequence[str | Path] = (),
) -> EvaluateResult:
    """Evaluate the model in ``model_dir``, check the gates, write the reports, log everything to its MLflow run.

    Args:
        params: validated params (``evaluate``, ``register.gates``, ``seed``, ``device``, ``mlflow``).
        dataset_dir: the ingest stage's output.
        model_dir: the train stage's output.
        advgen_dir: the advgen stage's output (transfer sets), or None.
        out_dir: the stage's output folder (replaced atomically on success).
        attack_runs: folders written by :func:`run_attack` (the pipeline's fan-out); the suite's attacks they
            hold are not run again. Without them every attack runs here.

    Returns:
        The metrics and the gate report.

    Raises:
        AttackRunMismatch: an attack run was computed on another model or dataset.
        StaleEvaluationError: the evaluation lacks the gate attack at the gate ε (params.yaml's check prevents it).
    """
    import mlflow

    seed_everything(params.seed)
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    model_sha256 = sha256_file(model_dir / "model.pt")  # the bytes about to be loaded are the bytes evaluated
    model, _ = load_model(model_dir)
    model = model.to(resolve_device(params.device))
    run_info = read_json(model_dir / "run.json")
    g = params.register
    precomputed = fanout.load(attack_runs, params.evaluate.attacks, seed=params.seed,
                              early_stop=params.evaluate.early_stop, model_sha256=model_sha256,
                              dataset_sha256=sha256_file(dataset_dir / "manifest.csv")) if attack_runs else None
    ev = evaluate_model(params.evaluate, model, dataset_dir, Path(advgen_dir) if advgen_dir else None, g.gate_attack,
                        g.gate_eps, params.seed, tuple(params.data.classes), precomputed)
    ev.extras["model"] = model
    metrics = ev.metrics
    if params.evaluate.certify.enabled and ev.test is not None:
        metrics["certified"] = certified_accuracy(params.evaluate.certify, model, ev.test.x, ev.test.y, params.seed,
                                                  params.evaluate.intervals.level)
        ev.seconds["certify"] = metrics["certified"].pop("seconds")  # timing.json: metrics.json stays reproducible
    metrics["suite"] = suite_fingerprint(params)
    gates = check_gates(metrics, g)
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "headline.json", headline(metrics, gates))
        proof = evidence.collect(model_sha256, tmp / "metrics.json", dataset_dir / "manifest.csv")
        write_json(tmp / "evidence.json", proof.to_dict())
        write_json(tmp / "calibration.json", ev.calibration.to_dict())
        write_json(tmp / "gates.json", gates.to_dict())
        mark = time.perf_counter()
        images = _figures(ev, params, run_info, tmp)
        ev.seconds["part/figures_and_saliency"] = round(time.perf_counter() - mark, 3)
        training = {"method": run_info.get("method"), "backbone": run_info.get("backbone"), "run_id": run_info.get("run_id"),
                    "settings": params.train.settings(run_info.get("method")), "epochs": params.train.epochs,
                    "selected_epoch": run_info.get("selected_epoch"), "selected_by": run_info.get("selected_by")}
        card = build_model_card(metrics, provenance(dataset_dir), training)
        (tmp / "model_card.md").write_text(card.markdown())
        (tmp / "report.md").write_text(summary(metrics, gates.results, gates.passed, run_info).markdown())
        (tmp / "report.html").write_text(build_report(metrics, gates.results, gates.passed, run_info, card,
                                                      images).html(tmp))
        write_json(tmp / "timing.json", {"seconds": ev.seconds, "early_stop": params.evaluate.early_stop})
        tracking.configure(params.mlflow)
        with mlflow.start_run(run_id=run_info["run_id"]):
            tracking.claim_run()
            flat = mlflow_metrics(metrics)
            flat["calibration/temperature"] = ev.calibration.temperature
            if ev.calibration.threshold is not None:
                flat["calibration/threshold"] = ev.calibration.threshold
            mlflow.log_metrics(flat)
            mlflow.set_tag("medrobust.gates_passed", str(gates.passed).lower())
            mlflow.set_tags(proof.tags())  # register trusts these, not the files it is handed
            mlflow.log_dict(ev.calibration.to_dict(), "calibration.json")
            mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
    result = EvaluateResult(Path(out_dir), metrics, gates)
    log.info("evaluate: clean accuracy %.3f, robust accuracy %.3f (%s at %s), value gates %s", result.clean_accuracy,
             result.gate_robust_accuracy, g.gate_attack, metrics["headline"]["gate_eps"],
             "passed" if gates.passed else "FAILED: " + ", ".join(r.name for r in gates.results if not r.passed))
    return result
