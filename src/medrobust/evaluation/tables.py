"""``metrics.json`` as flat tables: the CSV files DVC plots, and the names MLflow logs.

Every plot table has a ``series`` column (one line per value): the templates in ``.dvc/plots/``
(``series_band`` with the ``ci_low``–``ci_high`` band, ``series`` without) colour by it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from medrobust.config import parse_eps
from medrobust.evaluation.plots import reliability_table, roc_points


def is_estimate(node: Any) -> bool:
    """Whether ``node`` is a reported figure (``{"value", "ci", ...}``)."""
    return isinstance(node, dict) and "value" in node and "ci" in node


def estimates(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every reported figure under ``node`` with its path of keys.

    Args:
        node: a (part of) ``metrics.json``.
        path: the keys leading to ``node``.

    Yields:
        (path of keys, estimate) pairs, depth first.
    """
    if is_estimate(node):
        yield path, node
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from estimates(child, (*path, str(key)))


def robustness_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``robustness.csv`` (a DVC plot): accuracy and its CI per (white-box / worst-case / transfer attack, ε)."""
    rows = []
    for kind in ("whitebox", "worst_case", "transfer"):
        for attack, by_eps in metrics.get(kind, {}).items():
            for label, m in by_eps.items():
                eps = parse_eps(label)
                acc = m["accuracy"]
                series = f"transfer {attack}" if kind == "transfer" else attack
                rows.append({"series": series, "kind": kind, "attack": attack, "eps": eps, "eps_255": round(eps * 255, 4),
                             "accuracy": acc["value"], "ci_low": acc["ci"][0], "ci_high": acc["ci"][1]})
    return rows


def shift_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``shifts.csv`` (a DVC plot): accuracy and its CI per (shift, severity); severity 0 is clean."""
    clean = metrics["clean"]["accuracy"]
    rows = []
    for name, entry in metrics.get("shifts", {}).items():
        rows.append({"series": name, "shift": name, "severity": 0, "accuracy": clean["value"], "ci_low": clean["ci"][0],
                     "ci_high": clean["ci"][1]})
        for severity, m in entry["severities"].items():
            acc = m["accuracy"]
            rows.append({"series": name, "shift": name, "severity": int(severity), "accuracy": acc["value"], "ci_low": acc["ci"][0],
                         "ci_high": acc["ci"][1]})
    return rows


def roc_rows(y: np.ndarray, curves: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``roc.csv`` (a DVC plot): the ROC curve of each condition (clean, at the gate ε).

    Args:
        y: ``[N]`` true classes.
        curves: condition name -> ``[N]`` probabilities of class 1.

    Returns:
        One row per curve point: ``series``, ``condition``, ``fpr``, ``tpr``, ``threshold``.
    """
    rows = []
    for name, p in curves.items():
        fpr, tpr, thresholds = roc_points(y, p)
        rows += [{"series": name, "condition": name, "fpr": float(f), "tpr": float(t), "threshold": float(min(th, 1.0))}
                 for f, t, th in zip(fpr, tpr, thresholds, strict=True)]
    return rows


def reliability_rows(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """``reliability.csv`` (a DVC plot): per confidence bin, accuracy before and after temperature scaling.

    Args:
        y: ``[N]`` true classes.
        raw: ``[N, C]`` probabilities before scaling.
        calibrated: ``[N, C]`` probabilities after scaling.
        n_bins: equal-width bins.

    Returns:
        One row per non-empty bin and scaling.
    """
    rows = []
    for when, probs in (("before", raw), ("after", calibrated)):
        rows += [{"series": f"{when} scaling", "scaling": when, **r} for r in reliability_table(y, probs, n_bins) if r["count"]]
    return rows


def metric_name(path: tuple[str, ...]) -> str:
    """An MLflow metric name for a path of keys (``/`` between keys; characters MLflow refuses become ``_``)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", p) for p in path)


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The figures MLflow logs: every clean, calibration, headline and worst-case figure with its CI
    bounds, and the (robust) accuracy of every attack, transfer set, shift and slice.

    Returns:
        ``{"clean/accuracy": v, "clean/accuracy.ci_low": lo, ..., "whitebox/pgd_linf/8_255/accuracy": v}``.
    """
    out: dict[str, float] = {}
    full = ("clean", "calibration", "headline", "worst_case", "targeted_false_negative_rate")
    for path, est in estimates({k: metrics[k] for k in metrics if k in full}):
        name = metric_name(path)
        if est["value"] is not None:
            out[name] = est["value"]
        for bound, value in zip(("ci_low", "ci_high"), est["ci"], strict=True):
            if value is not None:
                out[f"{name}.{bound}"] = value
    for section in ("whitebox", "transfer", "shifts", "slices"):
        for path, est in estimates(metrics.get(section, {}), (section,)):
            if path[-1] in ("accuracy", "mean_accuracy", "relative_drop", "robust_accuracy") and est["value"] is not None:
                out[metric_name(path)] = est["value"]
    out.update({f"masking/{c['name']}": float(c["passed"]) for c in metrics.get("masking_checks", [])})
    return out


__all__ = ["estimates", "is_estimate", "metric_name", "mlflow_metrics", "reliability_rows", "robustness_rows", "roc_rows",
           "shift_rows"]
