"""``pretrain.md`` and ``pretrain.png``: the heads' accuracy against the pretraining noise ratio.

Both read ``pretrain.json`` (:mod:`medrobust.stages.pretrain`): one row per (noise ratio, head), four
accuracies each (in / out of distribution, clean / under PGD) with their Wilson 95 % intervals and the
number of test images behind them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONDITION_NAMES = {"id_clean": "ID clean", "id_pgd": "ID PGD", "ood_clean": "OOD clean", "ood_pgd": "OOD PGD"}


def _cell(est: dict[str, Any]) -> str:
    if est["value"] is None:
        return "—"
    lo, hi = est["ci"]
    return f"{100 * est['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def to_markdown(report: dict[str, Any]) -> str:
    """The table: a row per noise ratio and head, a column per condition, and what it rests on."""
    attack = report["attack"]
    lines = [
        "# RAN's upstream stage: heads on a CLIP pre-trained with noisy pairs",
        "",
        f"{report['n_train_pairs']} train pairs; each accuracy rests on {report['n_test']} test images (Wilson 95 % "
        f"interval). OOD: the test split under `{report['shift']}` at severity {report['shift_severity']}. PGD: "
        f"L∞, ε = {attack['eps'] * 255:.3g}/255, {attack['steps']} steps, random start.",
        "",
        "| noise | noisy pairs | val contrastive loss | head | " + " | ".join(CONDITION_NAMES.values()) + " |",
        "|---|---|---|---|" + "---|" * len(CONDITION_NAMES),
    ]
    for entry in report["ratios"]:
        pairs = entry["pairs"]
        for head, conds in entry["heads"].items():
            lines.append(f"| {100 * entry['ratio']:.0f}% | {pairs['noisy']} of {pairs['pairs']} | "
                         f"{entry['val_contrastive_loss']:.3f} | {head} | "
                         + " | ".join(_cell(conds[c]) for c in CONDITION_NAMES) + " |")
    examples = [e for entry in report["ratios"] for e in entry["examples"]][:3]
    if examples:
        lines += ["", "Caption edits (the attack against the text tower):", ""]
        lines += [f"- `{e['caption']}` → `{e['perturbed']}`" for e in examples]
    return "\n".join(lines) + "\n"


def plot_ratios(report: dict[str, Any], path: str | Path) -> None:
    """Accuracy against the noise ratio, a panel per condition, a line per head, 95 % error bars."""
    fig, axes = plt.subplots(1, len(CONDITION_NAMES), figsize=(13, 3.6), sharey=True)
    ratios = [100 * e["ratio"] for e in report["ratios"]]
    heads = list(report["ratios"][0]["heads"]) if report["ratios"] else []
    for ax, (cond, title) in zip(axes, CONDITION_NAMES.items()):
        for head in heads:
            ests = [e["heads"][head][cond] for e in report["ratios"]]
            values = [est["value"] for est in ests]
            below = [v - est["ci"][0] for v, est in zip(values, ests)]
            above = [est["ci"][1] - v for v, est in zip(values, ests)]
            ax.errorbar(ratios, values, yerr=[below, above], marker="o", capsize=3, label=head)
        ax.set(title=title, xlabel="noisy pretraining pairs (%)", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (95% CI, n = {report['n_test']})")
    axes[-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["CONDITION_NAMES", "plot_ratios", "to_markdown"]
