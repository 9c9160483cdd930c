"""The pages of ``medrobust compare``: ``compare.md`` for people and ``compare.png``, a box plot per metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from medrobust.bench.compare import LABELS, METRICS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _pm(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}" if entry["sd"] is not None else f"{entry['mean']:.3f}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def box_plot(report: dict[str, Any], path: str | Path) -> Path:
    """One panel per metric: a box per method over the folds, each fold's score as a point.

    Args:
        report: :func:`~medrobust.bench.compare.compare_methods`'s report.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    methods = report["methods"]
    metrics = [k for k in METRICS if any(r[k] is not None for m in methods for r in report["scores"][m])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, key in zip(axes[0], metrics, strict=True):
        values = [[r[key] for r in report["scores"][m] if r[key] is not None] for m in methods]
        ax.boxplot(values, widths=0.55)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=8)
        for i, v in enumerate(values, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=14, color="black", alpha=0.7, zorder=3)
        ax.set_title(LABELS[key], fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{report['folds']}-fold patient-grouped cross-validation ({report['n_images']} images, "
                 f"{report['n_patients']} patients)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def to_markdown(report: dict[str, Any], command: str, figure: str | None = None) -> str:
    """``compare.md``: the protocol, mean ± sd per metric, pooled out-of-fold accuracies with CIs, the tests.

    Args:
        report: :func:`~medrobust.bench.compare.compare_methods`'s report.
        command: the command line that reproduces it.
        figure: the box plot's file name, to embed.

    Returns:
        The markdown page.
    """
    rb, methods = report["robustness"], report["methods"]
    minutes, seconds = divmod(int(round(report["wall_seconds"])), 60)
    sizes = report["fold_sizes"]
    lines = [
        "# Training methods compared by patient-grouped cross-validation", "",
        f"Command: `{command}` — wall time {minutes} min {seconds} s on {report['threads']} threads.", "",
        f"Every image of the ingested dataset ({report['n_images']} images of {report['n_patients']} patients) in "
        f"{report['folds']} folds by patient (`GroupKFold` on the patient pseudonyms); in each fold a patient-disjoint "
        f"validation part of the training patients fits the temperature and the operating point. Test parts: "
        f"{min(s['test'] for s in sizes)}–{max(s['test'] for s in sizes)} images. Every method trains on the same folds "
        f"with the same budget (backbone `{report['backbone']}`, {report['epochs']} epochs, seed {report['seed']} + fold) "
        f"and its `train.methods` settings. Robust accuracy: the worst case per image over "
        f"{', '.join(f'`{a}`' for a in rb['attacks'])} at {rb['norm']} ε = {rb['eps']} (the gates' figure).", "",
        "## Mean ± sd over the folds", "",
        "| method | " + " | ".join(LABELS[k] for k in METRICS) + " | train s (median) |",
        "|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for m in methods:
        s = report["summary"][m]
        lines.append(f"| {m} | " + " | ".join(_pm(s[k]) for k in METRICS) + f" | {s['train_seconds']:.0f} |")
    lines += ["", "## Out of fold: every image tested once (95% Wilson interval)", "",
              "| method | clean accuracy | robust accuracy | images |", "|---|---:|---:|---:|"]
    for m in methods:
        c, r = report["summary"][m]["pooled_clean_accuracy"], report["summary"][m]["pooled_robust_accuracy"]
        lines.append(f"| {m} | {c['value']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | "
                     f"{r['value']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {c['n']} |")
    lines += ["", "## Pairwise tests (two-sided p-values; difference = first − second, mean over folds)", "",
              f"Paired Wilcoxon signed-rank over the {report['folds']} folds, and Mann–Whitney U on the fold scores "
              f"(unpaired). With {report['folds']} folds the smallest possible Wilcoxon p is "
              f"{report['wilcoxon_min_p']:.4f}: a difference in every fold is the strongest evidence this design can "
              "give; more folds or repeated cross-validation are needed for p < 0.05. No correction for multiple "
              "comparisons is applied.", "",
              "| pair | metric | difference | Wilcoxon p | Mann–Whitney p |", "|---|---|---:|---:|---:|"]
    for pair, by_metric in report["pairs"].items():
        for k in METRICS:
            t = by_metric[k]
            if t["folds"]:
                lines.append(f"| {pair} | {LABELS[k]} | {t['mean_difference']:+.3f} | {_p(t['wilcoxon_p'])} | "
                             f"{_p(t['mannwhitney_p'])} |")
    lines += ["", "## Every fold", "", "| fold | method | train / val / test images | clean acc | balanced acc | "
              "ROC AUC | robust acc | train s |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for i in range(report["folds"]):
        for m in methods:
            r = report["scores"][m][i]
            auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
            lines.append(f"| {i + 1} | {m} | {r['n_train']} / {r['n_val']} / {r['n_test']} | {r['clean_accuracy']:.3f} | "
                         f"{r['balanced_accuracy']:.3f} | {auc} | {r['robust_accuracy']:.3f} | {r['train_seconds']:.0f} |")
    if figure:
        lines += ["", f"![fold scores per method]({figure})"]
    return "\n".join(lines) + "\n"


__all__ = ["box_plot", "to_markdown"]
