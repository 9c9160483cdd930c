"""The whole evaluation of one model: the numbers of ``metrics.json``.

* clean accuracy and ROC AUC on the test split;
* robust accuracy for every (attack, norm, ε) of ``evaluate.attacks``, white-box, with early
  stopping (``evaluate.early_stop``: only points still classified correctly are attacked — same numbers);
* the gradient-masking checks (:mod:`medrobust.evaluation.masking`);
* accuracy under natural shifts per shift and severity (:mod:`medrobust.evaluation.shifts`);
* accuracy on every advgen transfer set (crafted on the surrogate).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from medrobust.attacks.spec import from_spec
from medrobust.config import eps_label, parse_eps
from medrobust.data.shards import load_rows, load_split
from medrobust.evaluation.config import EvaluateConfig
from medrobust.evaluation.masking import run_masking_checks
from medrobust.evaluation.metrics import clean_metrics, evaluate_attack
from medrobust.evaluation.shifts import default_shifts, shift_accuracy
from medrobust.models.inference import accuracy

log = logging.getLogger(__name__)


def evaluate_model(cfg: EvaluateConfig, model: torch.nn.Module, dataset_dir: Path, advgen_dir: Path | None,
                   gate_eps: float, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate ``model`` on the test split of ``dataset_dir``.

    Args:
        cfg: the ``evaluate`` section.
        model: the model (on its device).
        dataset_dir: the ingest stage's output.
        advgen_dir: the advgen stage's output (its transfer sets), or None.
        gate_eps: the gate's ε (``register.gates.gate_eps``), where the black-box masking check runs.
        seed: params.yaml's ``seed`` (attack random starts, shift noise).

    Returns:
        (every number of the evaluation — the content of ``metrics.json`` —, seconds per attack run).
        The seconds are kept apart: metrics must be the same on every run with the same params.
    """
    test = load_split(dataset_dir, "test")
    metrics: dict[str, Any] = {"n_test": len(test), "clean": clean_metrics(model, test.x, test.y)}
    metrics["whitebox"] = {}
    seconds: dict[str, float] = {}
    jobs = [(a, e) for a in cfg.attacks for e in a.eps]
    for spec, eps in tqdm(jobs, desc="attacks", mininterval=5):
        attack = from_spec(spec, model, eps, seed=seed)
        res = evaluate_attack(model, attack, test.x, test.y, cfg.batch_size, early_stop=cfg.early_stop)
        metrics["whitebox"].setdefault(spec.key, {})[eps_label(eps)] = res.accuracy
        seconds[f"{spec.key}@{eps_label(eps)}"] = round(res.seconds, 3)
        log.info("%s ε=%s: robust accuracy %.3f (%.1f s)", spec.key, eps_label(eps), res.accuracy, res.seconds)
    if cfg.masking.enabled:
        checks = run_masking_checks(model, test.x, test.y, metrics["whitebox"], cfg.masking, gate_eps,
                                    eps_label(gate_eps), seed=seed)
        metrics["masking_checks"] = [c.to_dict() for c in checks]
        for c in checks:
            (log.info if c.passed else log.warning)("masking check %s: %s — %s", c.name,
                                                     "pass" if c.passed else "FAIL", c.message)
    if cfg.shifts.enabled:
        modality = str(test.manifest["modality"].mode().iloc[0]) if "modality" in test.manifest else "default"
        names = cfg.shifts.names or default_shifts(modality)
        acc = shift_accuracy(model, test.x, test.y, names, seed=seed, batch_size=cfg.batch_size)
        metrics["shifts"] = {name: {str(s): by_sev[s] for s in cfg.shifts.severities} for name, by_sev in acc.items()}
        metrics["shifts_modality"] = modality
    metrics["transfer"] = {}
    if advgen_dir is not None and (advgen_dir / "manifest.csv").exists():
        adv = pd.read_csv(advgen_dir / "manifest.csv")
        for _, rows in adv.groupby("set", sort=True):
            x, y = load_rows(advgen_dir, rows)
            key = f"{rows['attack'].iloc[0]}_{rows['norm'].iloc[0]}"
            metrics["transfer"].setdefault(key, {})[eps_label(float(rows["eps"].iloc[0]))] = accuracy(model, x, y)
    return metrics, seconds


def curves(section: dict[str, dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    """``{attack: {ε label: accuracy}}`` -> ``{attack: [(ε, accuracy), ...]}``.

    Args:
        section: ``metrics.json``'s ``whitebox`` or ``transfer``.

    Returns:
        Per attack its points, ε parsed to a float, in the section's order.

    Raises:
        ConfigError: an ε label that is not a number or fraction.

    Example:
        >>> curves({"pgd_linf": {"8/255": 0.5}})
        {'pgd_linf': [(0.03137254901960784, 0.5)]}
    """
    return {k: [(parse_eps(e), a) for e, a in v.items()] for k, v in section.items()}


def robustness_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``robustness.csv`` (the DVC plot): one per (white-box or transfer attack, ε).

    Args:
        metrics: the content of ``metrics.json``.

    Returns:
        Dicts with ``kind`` (``"whitebox"`` or ``"transfer"``), ``attack``, ``eps``, ``eps_255``
        (ε·255, rounded to 4 decimals) and ``accuracy``.
    """
    return [
        {"kind": kind, "attack": attack, "eps": eps, "eps_255": round(eps * 255, 4), "accuracy": acc}
        for kind in ("whitebox", "transfer")
        for attack, pts in curves(metrics[kind]).items() for eps, acc in pts
    ]


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``metrics.json`` as flat MLflow metric names (``clean/accuracy``, ``whitebox/pgd_linf/8_255`` ...).

    Args:
        metrics: the content of ``metrics.json``.

    Returns:
        ``{name: value}``: ``clean/<metric>``, ``shift/<shift>/<severity>``, ``masking/<check>``
        (1.0 passed, 0.0 failed) and ``<whitebox|transfer>/<attack>/<ε label>`` (a ``/`` inside the
        attack or the ε label becomes ``_``).
    """

    def name(*parts: str) -> str:
        return "/".join(p.replace("/", "_") for p in parts)

    flat = {f"clean/{k}": v for k, v in metrics["clean"].items()}
    for shift, by_sev in metrics.get("shifts", {}).items():
        flat.update({f"shift/{shift}/{s}": a for s, a in by_sev.items()})
    flat.update({f"masking/{c['name']}": float(c["passed"]) for c in metrics.get("masking_checks", [])})
    for kind in ("whitebox", "transfer"):
        for attack, by_eps in metrics[kind].items():
            flat.update({name(kind, attack, e): a for e, a in by_eps.items()})
    return flat


__all__ = ["curves", "evaluate_model", "mlflow_metrics", "robustness_rows"]
