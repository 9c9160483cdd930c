"""The model card (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019, arXiv 1810.03993):
what the model is for, what it was trained and tested on, how robust and how calibrated it is, and
what the numbers do and do not say.

Every figure comes from ``metrics.json`` with its confidence interval; the data provenance from the
ingest stage's own records (``ingest.json``, ``validation.json``) and the DVC hash of the ingested
folder, which ties the card to the exact data.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from medrobust.defenses import TRAINING_METHODS
from medrobust.evaluation.document import Document
from medrobust.evaluation.format import fmt, worst_shift
from medrobust.utils import dvc_md5, read_json


def provenance(dataset_dir: str | Path) -> dict[str, Any]:
    """What the model was trained and tested on, from the ingest stage's output.

    Args:
        dataset_dir: the ingest stage's output folder.

    Returns:
        ``source``, ``dvc_md5``, ``validation_success``, ``checks``, ``failed_checks``, ``splits``,
        ``classes``, ``patients``, ``quarantined`` (missing records give None).
    """
    dataset_dir = Path(dataset_dir)
    ingest = read_json(dataset_dir / "ingest.json") if (dataset_dir / "ingest.json").is_file() else {}
    validation = read_json(dataset_dir / "validation.json") if (dataset_dir / "validation.json").is_file() else {}
    checks = validation.get("checks", [])
    return {"source": ingest.get("source"), "dvc_md5": dvc_md5(dataset_dir), "validation_success": validation.get("success"),
            "checks": len(checks), "failed_checks": sum(not c.get("success", True) for c in checks),
            "splits": ingest.get("splits"), "classes": ingest.get("classes"), "patients": ingest.get("patients"),
            "quarantined": ingest.get("quarantined")}


def method_paper(method: str) -> str:
    """The first line of the training method's module docstring: its paper, by title and arXiv id."""
    module = inspect.getmodule(TRAINING_METHODS[method])
    doc = (module.__doc__ if module is not None else "") or ""
    return " ".join(doc.strip().split("\n\n")[0].split()).rstrip(":") if doc.strip() else method


def build_model_card(metrics: dict[str, Any], data: dict[str, Any], training: dict[str, Any]) -> Document:
    """The model card as a :class:`~medrobust.evaluation.document.Document`.

    Args:
        metrics: the content of ``metrics.json``.
        data: :func:`provenance`.
        training: ``method``, ``backbone``, ``settings`` (its params.yaml section), ``epochs``,
            ``run_id`` (MLflow).
    """
    classes = metrics.get("classes", [])
    head = metrics["headline"]
    card = Document(f"Model card: {training.get('method')} / {training.get('backbone')}")
    card.h2("Intended use")
    card.ul([
        f"Research and development of classifiers of {', '.join(map(str, classes))} on "
        f"{metrics.get('shifts_modality') or 'medical'} images, and evidence for a registry promotion "
        "(the robustness gates).",
        "Out of scope: diagnosis or triage of patients; any data unlike the validated test set (another "
        "modality, device, population or image size); decisions that rely on the probabilities outside the "
        "calibration measured here. This model is not a medical device.",
    ])
    card.h2("Data")
    card.table(["fact", "value"], [
        ["source", f"`{data.get('source')}`"],
        ["ingested data (DVC hash)", f"`{data.get('dvc_md5')}`"],
        ["Great Expectations", f"{'PASS' if data.get('validation_success') else 'FAIL'}: {data.get('checks')} checks, "
                               f"{data.get('failed_checks')} failed"],
        ["images per split", ", ".join(f"{k} {v}" for k, v in (data.get("splits") or {}).items())],
        ["images per class", ", ".join(f"{k} {v}" for k, v in (data.get("classes") or {}).items())],
        ["patients", str(data.get("patients"))], ["quarantined items", str(data.get("quarantined"))],
    ])
    card.h2("Training")
    settings = ", ".join(f"{k}={v}" for k, v in sorted((training.get("settings") or {}).items())) or "defaults"
    card.table(["fact", "value"], [
        ["method", f"`{training.get('method')}` — {method_paper(training['method'])}" if training.get("method")
         in TRAINING_METHODS else str(training.get("method"))],
        ["settings", settings], ["backbone", f"`{training.get('backbone')}`"],
        ["epochs", str(training.get("epochs"))
         + (f" (kept epoch {training['selected_epoch']}: {training.get('selected_by')})"
            if training.get("selected_epoch") else "")], ["MLflow run", f"`{training.get('run_id')}`"],
    ])
    card.h2("Performance on the test split")
    card.table(["figure", "value [95% CI]"], [
        ["clean accuracy", fmt(metrics["clean"]["accuracy"])],
        [f"robust accuracy ({head['gate_attack']}, ε={head['gate_eps']})", fmt(head.get("robust_accuracy"))],
        ["sensitivity / specificity (operating point)",
         f"{fmt(metrics['clean']['sensitivity'])} / {fmt(metrics['clean']['specificity'])}"],
        ["ROC AUC", fmt(metrics["clean"]["roc_auc"])],
        ["ECE (15 bins), calibrated", fmt(metrics["calibration"]["ece_after"])],
    ])
    checks = metrics.get("masking_checks") or []
    card.p("Gradient-masking checks: " + (", ".join(f"{c['name']} {'PASS' if c['passed'] else 'FAIL'}"
                                                     for c in checks) or "not run") + ".")
    shift = worst_shift(metrics)
    if shift:
        card.p(f"Natural shifts: the worst is `{shift[0]}`, mean accuracy over severities {fmt(shift[1]['mean_accuracy'])} "
               f"(relative drop {fmt(shift[1]['relative_drop'])}).")
    worst = (metrics.get("slices") or {}).get("worst")
    if worst:
        card.p(f"Slices: the weakest is {worst['column']} = `{worst['value']}` ({worst['by']} {worst['score']:.2f}).")
    cal = metrics["calibration"]
    card.p(f"Calibration: temperature T = {cal['temperature']:.3f} fitted on {cal['n_val']} validation images; "
           f"the operating point ({cal['rule']}) is P(positive) ≥ {cal['threshold']:.3f}." if cal.get("threshold")
           is not None else f"Calibration: temperature T = {cal['temperature']:.3f} fitted on {cal['n_val']} "
                            "validation images; decisions are the argmax.")
    card.h2("Limitations")
    n = metrics.get("n_test")
    card.ul([
        f"Every figure rests on {n} test images from {metrics.get('n_patients')} patients. A 95% interval is the "
        "range that would contain the true value in 95% of repeated samplings of such a test set: it covers sampling "
        "error only, not a shift in population, device or protocol.",
        "Robust accuracy is an upper bound: the attacks of this suite failed on those points; a stronger or adaptive "
        "attack may still succeed. Certified bounds are not part of this card.",
        "The operating point and the temperature were chosen on the validation split; at another site the prevalence "
        "and the calibration may differ, and they should be checked there before use.",
    ])
    return card


__all__ = ["build_model_card", "method_paper", "provenance"]
