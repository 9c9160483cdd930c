"""The whole evaluation of one model: every figure of ``metrics.json``, each with its interval.

On the test split, for the clean images and for every condition — each attack of ``evaluate.attacks``
at each ε, the worst case over the suite at each norm and ε (the headline robust accuracy), each
natural shift at each severity, each advgen transfer set — the clinical metrics of
:mod:`medrobust.evaluation.clinical` at the operating point chosen on the validation split, with
Wilson intervals for proportions and a patient-clustered bootstrap for the rest. Then the attack
success rates, the attack-induced false-negative rate (binary tasks), the gradient-masking checks,
the MedMNIST-C shift summary (mean accuracy over severities, relative drop, robustness under shift)
and the metrics per slice of the manifest (modality, view, laterality ...).

Every figure is ``{"value": v, "ci": [lo, hi], "n": images}``. Accuracy and robust accuracy are of
the argmax (what attacks flip); sensitivity, specificity, PPV, NPV and balanced accuracy are at the
operating point.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medrobust.attacks import attack_params
from medrobust.attacks.spec import AttackSpec
from medrobust.config import eps_label
from medrobust.data.shards import ArraySplit, load_rows, load_split
from medrobust.evaluation import conditions as cond
from medrobust.evaluation.calibration import Calibration, calibrate, softmax
from medrobust.evaluation.clinical import ECE_BINS, clinical_metrics, weighted_brier, weighted_ece, weighted_mean
from medrobust.evaluation.config import DEFAULT_SLICE_COLUMNS, EvaluateConfig
from medrobust.evaluation.masking import run_masking_checks
from medrobust.evaluation.shifts import default_shifts
from medrobust.evaluation.stats import Bootstrap, proportion
from medrobust.utils.io import read_csv

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """The evaluation's numbers and what the plots, the saliency grid and the report draw from.

    Attributes:
        metrics: the content of ``metrics.json``.
        seconds: seconds per attack run (kept out of the metrics, which must be reproducible).
        calibration: the temperature and the operating point (fitted on the validation split).
        y: ``[N]`` test classes.
        clean: the clean test condition.
        gate: the condition of the gate (worst case or single attack at the gate ε), if evaluated.
        test: the test split.
        extras: anything a caller attaches (the stage keeps the model here for the saliency grid).
        strongest: the single attack of the suite with the lowest robust accuracy at the gate ε (the first
            such in the suite); the saliency grid and the cheap robustness-under-shift use it.
    """

    metrics: dict[str, Any]
    seconds: dict[str, float]
    calibration: Calibration
    y: np.ndarray
    clean: cond.Condition
    gate: cond.Condition | None = None
    strongest: AttackSpec | None = None
    test: ArraySplit | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _relative_drop(shifted: np.ndarray, reference: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``1 − mean(shifted) / mean(reference)`` per resample (NaN where the reference mean is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - weighted_mean(shifted, w) / weighted_mean(reference, w)


def _groups(split: ArraySplit) -> np.ndarray:
    if split.manifest is not None and "patient_id" in split.manifest:
        return split.manifest["patient_id"].astype(str).to_numpy()
    return np.arange(len(split)).astype(str)


def _attack_metrics(c: cond.Condition, y: np.ndarray, cal: Calibration, boot: Bootstrap,
                    classes: tuple[str, ...]) -> dict[str, Any]:
    m = clinical_metrics(y, cal.probabilities(c.logits), boot, cal.threshold, classes)
    m["accuracy"] = proportion(int(c.robust.sum()), len(y), boot.level)  # robust accuracy
    m["attack_success_rate"] = proportion(int((c.clean_correct & ~c.robust).sum()), int(c.clean_correct.sum()),
                                          boot.level)
    return m


def evaluate_model(cfg: EvaluateConfig, model: Any, dataset_dir: Path, advgen_dir: Path | None, gate_attack: str,
                   gate_eps: float, seed: int, classes: tuple[str, ...],
                   precomputed: Mapping[tuple[str, str], cond.Condition] | None = None) -> Evaluation:
    """Evaluate ``model`` on the test split of ``dataset_dir`` (calibrated on its validation split).

    Args:
        cfg: the ``evaluate`` section.
        model: the classifier (on its device).
        dataset_dir: the ingest stage's output.
        advgen_dir: the advgen stage's output (its transfer sets), or None.
        gate_attack: ``register.gate_attack`` (an attack key or ``worst_case_<norm>``).
        gate_eps: ``register.gate_eps``.
        seed: params.yaml's ``seed`` (attack random starts, shift noise).
        classes: ``data.classes``.
        precomputed: ``{(attack key, ε label): condition}`` of suite attacks already run elsewhere (the
            Kubeflow fan-out's attack runs, :mod:`medrobust.evaluation.fanout`); the rest run here.

    Returns:
        The :class:`Evaluation`.
    """
    precomputed = precomputed or {}
    start = time.perf_counter()
    test, val = load_split(dataset_dir, "test"), load_split(dataset_dir, "val")
    y = test.y.numpy().astype(int)
    n = len(y)
    boot = Bootstrap.of(_groups(test), cfg.intervals)
    cal = calibrate(cond.clean(model, val.x, cfg.batch_size).logits, val.y.numpy(), cfg.operating_point)
    clean = cond.clean(model, test.x, cfg.batch_size)
    probs = cal.probabilities(clean.logits)
    metrics: dict[str, Any] = {
        "n_test": n, "n_patients": int(len(np.unique(_groups(test)))), "classes": list(classes),
        "intervals": {"level": cfg.intervals.level, "proportions": "Wilson score",
                      "other": "percentile bootstrap resampling patients",
                      "bootstrap_resamples": cfg.intervals.bootstrap_resamples, "bootstrap_seed": cfg.intervals.bootstrap_seed},
        "ece_bins": ECE_BINS,
        "clean": clinical_metrics(y, probs, boot, cal.threshold, classes),
    }
    raw = softmax(clean.logits)
    metrics["calibration"] = {
        **cal.to_dict(),
        "ece_before": boot.estimate(float(weighted_ece(raw, y, np.ones((1, n)))[0]), lambda w: weighted_ece(raw, y, w), n),
        "ece_after": metrics["clean"]["ece"],
        "brier_before": boot.estimate(float(weighted_brier(raw, y, np.ones((1, n)))[0]),
                                      lambda w: weighted_brier(raw, y, w), n),
        "brier_after": metrics["clean"]["brier"],
    }
    ev = Evaluation(metrics, {}, cal, y, clean, test=test)

    # ---- attacks, and the worst case over the suite per norm and ε ----------------------------------------
    metrics["whitebox"], accuracy_table = {}, {}
    by_norm_eps: dict[tuple[str, str], list[tuple[AttackSpec, cond.Condition]]] = defaultdict(list)
    for spec, eps in tqdm([(a, e) for a in cfg.attacks for e in a.eps], desc="attacks", mininterval=5):
        label = eps_label(eps)
        c = precomputed.get((spec.key, label))
        if c is None:
            if precomputed:
                log.warning("%s ε=%s: no attack run of the fan-out stands in for it; attacking here", spec.key, label)
            c = cond.attacked(model, spec, eps, test.x, test.y, cfg.batch_size, cfg.early_stop, seed)
        metrics["whitebox"].setdefault(spec.key, {})[label] = _attack_metrics(c, y, cal, boot, classes)
        accuracy_table.setdefault(spec.key, {})[label] = float(c.robust.mean()) if n else 0.0
        by_norm_eps[(spec.norm, label)].append((spec, c))
        ev.seconds[f"{spec.key}@{label}"] = round(c.seconds, 3)
        log.info("%s ε=%s: robust accuracy %.3f (%.1f s)", spec.key, label, accuracy_table[spec.key][label], c.seconds)
    metrics["worst_case"] = {}
    worst: dict[tuple[str, str], cond.Condition] = {}
    for (norm, label), runs in by_norm_eps.items():
        worst[(norm, label)] = cond.worst_case([c for _, c in runs], y)
        metrics["worst_case"].setdefault(f"worst_case_{norm}", {})[label] = _attack_metrics(
            worst[(norm, label)], y, cal, boot, classes)
    gate_label = eps_label(gate_eps)
    is_worst = gate_attack.startswith("worst_case_")
    gate_norm = gate_attack.removeprefix("worst_case_") if is_worst else next(
        (s.norm for s in cfg.attacks if s.key == gate_attack), "")
    gate_runs = by_norm_eps.get((gate_norm, gate_label), [])
    if gate_runs:
        # the lowest robust accuracy; among ties the first in the suite (deterministic: metrics must not vary)
        ev.strongest = gate_runs[min(range(len(gate_runs)), key=lambda i: (gate_runs[i][1].robust.mean(), i))][0]
        ev.gate = worst[(gate_norm, gate_label)] if is_worst else next(c for s, c in gate_runs if s.key == gate_attack)
    section = "worst_case" if is_worst else "whitebox"
    metrics["headline"] = {"gate_attack": gate_attack, "gate_eps": gate_label, "n_test": n,
                           "clean_accuracy": metrics["clean"]["accuracy"],
                           "robust_accuracy": metrics[section].get(gate_attack, {}).get(gate_label, {}).get("accuracy")}
    ev.seconds["part/clean_calibration_attacks"] = round(time.perf_counter() - start, 3)
    if cfg.targeted_false_negatives and len(classes) == 2:
        with _timed(ev, "targeted_false_negatives"):
            metrics["targeted_false_negative_rate"] = _targeted_fnr(cfg, model, test, cal, boot, seed)
    if cfg.masking.enabled:
        mark = time.perf_counter()
        checks = run_masking_checks(model, test.x, test.y, accuracy_table, cfg.masking, gate_eps, gate_label, seed=seed)
        metrics["masking_checks"] = [c.to_dict() for c in checks]
        for c in checks:
            (log.info if c.passed else log.warning)("masking check %s: %s — %s", c.name,
                                                     "pass" if c.passed else "FAIL", c.message)
        ev.seconds["part/masking_checks"] = round(time.perf_counter() - mark, 3)
    if cfg.shifts.enabled:
        with _timed(ev, "shifts"):
            _shifts(cfg, model, test, ev, boot, seed, gate_runs, gate_eps)
    with _timed(ev, "transfer_and_slices"):
        metrics["transfer"] = _transfer(advgen_dir, model, cal, boot, classes, cfg.batch_size)
        metrics["slices"] = _slices(cfg, test, ev, boot, classes, _ingest_source(dataset_dir))
    return ev


@contextmanager
def _timed(ev: Evaluation, part: str) -> Iterator[None]:
    """Seconds spent in one part of the evaluation, into ``ev.seconds["part/<part>"]`` (``timing.json``)."""
    mark = time.perf_counter()
    yield
    ev.seconds[f"part/{part}"] = round(time.perf_counter() - mark, 3)


def _ingest_source(dataset_dir: Path) -> str | None:
    """The source the ingest stage read (``ingest.json``), the ``source`` slice of a single-source dataset."""
    path = Path(dataset_dir) / "ingest.json"
    try:
        return str(json.loads(path.read_text()).get("source") or "") or None
    except (OSError, ValueError):
        return None


def _targeted_fnr(cfg: EvaluateConfig, model: Any, test: ArraySplit, cal: Calibration, boot: Bootstrap,
                  seed: int) -> dict[str, Any]:
    """Among the findings detected at the operating point, the share a targeted attack makes negative."""
    p1 = cal.probabilities(cond.clean(model, test.x, cfg.batch_size).logits)[:, 1]
    detected = np.flatnonzero((test.y.numpy() == 1) & (p1 >= cal.threshold))
    out: dict[str, Any] = {}
    for spec in cfg.attacks:
        if "targeted" not in attack_params(spec.name):
            continue
        for eps in spec.eps:
            logits = cond.targeted_to(model, spec, eps, test.x[detected], 0, cfg.batch_size, seed)
            missed = int((cal.probabilities(logits)[:, 1] < cal.threshold).sum()) if len(detected) else 0
            out.setdefault(spec.key, {})[eps_label(eps)] = proportion(missed, len(detected), boot.level)
    return out


def _shifts(cfg: EvaluateConfig, model: Any, test: ArraySplit, ev: Evaluation, boot: Bootstrap, seed: int,
            gate_runs: list[tuple[AttackSpec, cond.Condition]], gate_eps: float) -> None:
    """Every shift at every severity, its MedMNIST-C summary, and robustness under each shift."""
    metrics, y, cal, n = ev.metrics, ev.y, ev.calibration, len(ev.y)
    modality = str(test.manifest["modality"].mode().iloc[0]) if "modality" in test.manifest else "default"
    names = cfg.shifts.names or default_shifts(modality)
    clean_correct = (ev.clean.logits.argmax(1) == y).astype(float)
    specs = [s for s, _ in gate_runs] if cfg.shifts.under_attack == "suite" else (
        [ev.strongest] if ev.strongest is not None and cfg.shifts.under_attack == "strongest" else [])
    gate_robust = cond.worst_case([c for s, c in gate_runs if s in specs], y).robust.astype(float) if specs else None
    metrics["shifts"], metrics["shifts_modality"] = {}, modality
    per_shift: list[np.ndarray] = []
    for name in tqdm(names, desc="shifts", mininterval=5):
        by_sev, correct = {}, []
        for severity in cfg.shifts.severities:
            c = cond.shifted(model, test.x, name, severity, seed, cfg.batch_size)
            by_sev[str(severity)] = clinical_metrics(y, cal.probabilities(c.logits), boot, cal.threshold,
                                                     tuple(metrics["classes"]))
            correct.append(c.logits.argmax(1) == y)
        mean_correct = np.stack(correct, 1).mean(1)
        per_shift.append(mean_correct)
        entry: dict[str, Any] = {
            "severities": by_sev,
            "mean_accuracy": boot.estimate(float(mean_correct.mean()), lambda w: weighted_mean(mean_correct, w), n),
            "relative_drop": boot.estimate(
                1 - mean_correct.mean() / clean_correct.mean() if clean_correct.mean() > 0 else None,
                lambda w: _relative_drop(mean_correct, clean_correct, w), n),
        }
        if specs:
            x_shift = cond.shifted_images(test.x, name, cfg.shifts.attack_severity, seed, cfg.batch_size)
            runs = [cond.attacked(model, s, gate_eps, x_shift, test.y, cfg.batch_size, cfg.early_stop, seed) for s in specs]
            robust = cond.worst_case(runs, y).robust.astype(float)
            entry["under_attack"] = {
                "severity": cfg.shifts.attack_severity, "attacks": [s.key for s in specs], "eps": eps_label(gate_eps),
                "robust_accuracy": proportion(int(robust.sum()), n, boot.level),
                "relative_drop": boot.estimate(
                    1 - robust.mean() / gate_robust.mean() if gate_robust.mean() > 0 else None,
                    lambda w: _relative_drop(robust, gate_robust, w), n),
            }
        metrics["shifts"][name] = entry
        log.info("shift %s: accuracy by severity %s", name,
                 ", ".join(f"{s}={m['accuracy']['value']:.3f}" for s, m in by_sev.items()))
    if per_shift:  # one number for a gate: accuracy averaged over every shift and severity, per point
        overall = np.stack(per_shift, 1).mean(1)
        metrics["shifts_summary"] = {
            "shifts": list(names), "severities": list(cfg.shifts.severities),
            "mean_accuracy": boot.estimate(float(overall.mean()), lambda w: weighted_mean(overall, w), n),
        }


def _transfer(advgen_dir: Path | None, model: Any, cal: Calibration, boot: Bootstrap, classes: tuple[str, ...],
              batch_size: int) -> dict[str, Any]:
    """Every advgen transfer set (crafted on the surrogate) through the model."""
    out: dict[str, Any] = {}
    if advgen_dir is None or not (advgen_dir / "manifest.csv").exists():
        return out
    adv = read_csv(advgen_dir / "manifest.csv")
    for _, rows in adv.groupby("set", sort=True):
        x, y = load_rows(advgen_dir, rows)
        key = f"{rows['attack'].iloc[0]}_{rows['norm'].iloc[0]}"
        logits = cond.clean(model, x, batch_size).logits
        out.setdefault(key, {})[eps_label(float(rows["eps"].iloc[0]))] = clinical_metrics(
            y.numpy().astype(int), cal.probabilities(logits), boot, cal.threshold, classes)
    return out


def _slices(cfg: EvaluateConfig, test: ArraySplit, ev: Evaluation, boot: Bootstrap,
            classes: tuple[str, ...], source: str | None) -> dict[str, Any]:
    """Clean metrics and the headline robust accuracy per value of each slice column."""
    manifest = test.manifest if test.manifest is not None else pd.DataFrame(index=range(len(ev.y)))
    if source is not None and "source" not in manifest.columns:
        manifest = manifest.assign(source=source)
    wanted = list(dict.fromkeys([*DEFAULT_SLICE_COLUMNS, *cfg.slices.columns]))
    out: dict[str, Any] = {"min_slice_size": cfg.slices.min_slice_size, "columns": {},
                           "absent_columns": [c for c in wanted if c not in manifest.columns]}
    probs = ev.calibration.probabilities(ev.clean.logits)
    worst: tuple[float, str, str] | None = None
    for column in (c for c in wanted if c in manifest.columns):
        values = manifest[column].fillna("").astype(str).str.strip().replace("", "(missing)").to_numpy()
        out["columns"][column] = {}
        for value in sorted(set(values)):
            mask = values == value
            size = int(mask.sum())
            if size < cfg.slices.min_slice_size:
                out["columns"][column][value] = {"n": size, "too_small": True}
                continue
            entry: dict[str, Any] = {"n": size, "clean": clinical_metrics(ev.y[mask], probs[mask], boot.subset(mask),
                                                                          ev.calibration.threshold, classes)}
            if ev.gate is not None:
                entry["robust_accuracy"] = proportion(int(ev.gate.robust[mask].sum()), size, boot.level)
            out["columns"][column][value] = entry
            figure = entry.get("robust_accuracy") or entry["clean"]["accuracy"]
            if figure["value"] is not None and (worst is None or figure["value"] < worst[0]):
                worst = (figure["value"], column, value, figure)
    out["worst"] = None if worst is None else {"column": worst[1], "value": worst[2], "score": worst[0],
                                               "by": "robust_accuracy" if ev.gate is not None else "accuracy",
                                               "accuracy": worst[3]}  # the figure with its CI, for a gate
    return out


__all__ = ["Evaluation", "evaluate_model"]
