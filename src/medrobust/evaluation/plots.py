"""The evaluation's figures, PNG (rendered here: DVC's HTML plots load their JavaScript from a CDN,
which offline users lack): robustness curves with confidence bands, natural shifts, the reliability
diagram and ROC curves with the operating point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from medrobust.config import parse_eps
from medrobust.evaluation.clinical import ece_bins

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _band(ax: Any, xs: list[float], estimates: list[dict[str, Any]], **style: Any) -> None:
    """A line of the estimates' values and a shaded band of their intervals."""
    values = [e["value"] for e in estimates]
    lo = [e["ci"][0] if e["ci"][0] is not None else e["value"] for e in estimates]
    hi = [e["ci"][1] if e["ci"][1] is not None else e["value"] for e in estimates]
    (line,) = ax.plot(xs, values, marker=style.pop("marker", "o"), **style)
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)


def plot_robustness(metrics: dict[str, Any], path: str | Path, title: str = "",
                    gate: tuple[float, float] | None = None) -> None:
    """Robust accuracy against ε (×1/255) per attack, with 95% bands; the worst case bold; transfer dashed.

    Args:
        metrics: the content of ``metrics.json``.
        path: where the PNG goes.
        title: the figure title.
        gate: (gate ε, minimum robust accuracy), drawn as a star.
    """
    clean = metrics["clean"]["accuracy"]
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    sections = [("whitebox", {}), ("worst_case", {"color": "black", "linewidth": 2.4}), ("transfer", {"ls": "--"})]
    for section, style in sections:
        for name, by_eps in sorted(metrics.get(section, {}).items()):
            pts = sorted((parse_eps(e), m["accuracy"]) for e, m in by_eps.items())
            label = name.replace("_", " ") if section == "worst_case" else f"{section} {name}"
            _band(ax, [0.0] + [e * 255 for e, _ in pts], [clean] + [m for _, m in pts], label=label,
                  marker="x" if section == "transfer" else "o", **style)
    if gate is not None:
        ax.scatter([gate[0] * 255], [gate[1]], marker="*", s=180, c="red", zorder=5, label="gate minimum")
    ax.set(xlabel="ε (×1/255; the norm is in each curve's name)", ylabel="accuracy (95% CI)", ylim=(0, 1.02),
           title=title or "robustness curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_shifts(metrics: dict[str, Any], path: str | Path) -> None:
    """Accuracy against severity (0 = clean) per natural shift, with 95% bands.

    Args:
        metrics: the content of ``metrics.json`` (its ``clean`` and ``shifts`` sections).
        path: the PNG to write.
    """
    clean = metrics["clean"]["accuracy"]
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for name, entry in sorted(metrics.get("shifts", {}).items()):
        by_sev = entry["severities"]
        sev = sorted(by_sev, key=int)
        _band(ax, [0] + [int(s) for s in sev], [clean] + [by_sev[s]["accuracy"] for s in sev], label=name)
    ax.set(xlabel="severity (0 = clean)", ylabel="accuracy (95% CI)", ylim=(0, 1.02), title="natural shifts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_table(y: np.ndarray, probs: np.ndarray, n_bins: int) -> list[dict[str, float]]:
    """Per confidence bin: its range, its images, their mean confidence and their accuracy (top label).

    Args:
        y: ``[N]`` true classes.
        probs: ``[N, C]`` probabilities.
        n_bins: equal-width bins.

    Returns:
        One row per bin: ``bin``, ``low``, ``high``, ``count``, ``confidence``, ``accuracy``.
    """
    conf, correct = probs.max(1), probs.argmax(1) == y
    bins = ece_bins(conf, n_bins)
    rows = []
    for b in range(n_bins):
        member = bins == b
        rows.append({"bin": b, "low": b / n_bins, "high": (b + 1) / n_bins, "count": int(member.sum()),
                     "confidence": float(conf[member].mean()) if member.any() else float("nan"),
                     "accuracy": float(correct[member].mean()) if member.any() else float("nan")})
    return rows


def plot_reliability(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, n_bins: int, temperature: float,
                     path: str | Path) -> None:
    """The reliability diagram: accuracy against confidence per bin, before and after temperature scaling.

    Args:
        y: ``[N]`` test classes.
        raw: ``[N, C]`` probabilities at T = 1.
        calibrated: ``[N, C]`` probabilities at the fitted T.
        n_bins: the ECE's bins.
        temperature: T, for the legend.
        path: where the PNG goes.
    """
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
    for probs, label, marker in ((raw, "before (T = 1)", "s"), (calibrated, f"after (T = {temperature:.2f})", "o")):
        rows = [r for r in reliability_table(y, probs, n_bins) if r["count"]]
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=label)
    ax.set(xlabel=f"confidence (top label; {n_bins} equal-width bins)", ylabel="accuracy", xlim=(0, 1.02),
           ylim=(0, 1.02), title="reliability diagram (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_points(y: np.ndarray, p_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC curve: (false-positive rates, true-positive rates, thresholds).

    Args:
        y: ``[N]`` true classes (1 is positive).
        p_positive: ``[N]`` probabilities of class 1.

    Returns:
        ``sklearn.metrics.roc_curve``'s three arrays.
    """
    from sklearn.metrics import roc_curve

    return roc_curve(y == 1, p_positive)


def plot_roc(y: np.ndarray, curves: dict[str, np.ndarray], threshold: float | None, path: str | Path) -> None:
    """ROC curves (clean, and at the gate ε) with the operating point marked on each.

    Args:
        y: ``[N]`` test classes (class 1 positive).
        curves: name -> ``[N]`` calibrated P(positive) under that condition.
        threshold: the operating point (None: 0.5).
        path: where the PNG goes.
    """
    thr = 0.5 if threshold is None else threshold
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    for name, p in curves.items():
        fpr, tpr, _ = roc_points(y, p)
        (line,) = ax.plot(fpr, tpr, label=name)
        pred = p >= thr
        sens = float(pred[y == 1].mean()) if (y == 1).any() else float("nan")
        fall = float(pred[y == 0].mean()) if (y == 0).any() else float("nan")
        ax.scatter([fall], [sens], color=line.get_color(), edgecolor="black", zorder=5, s=60)
    ax.scatter([], [], color="white", edgecolor="black", s=60, label=f"operating point (P ≥ {thr:.2f})")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title="ROC (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["plot_reliability", "plot_robustness", "plot_roc", "plot_shifts", "reliability_table", "roc_points"]
