"""``report.md``: the evaluation for people — clean and robust accuracy, masking checks, shifts, gates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class GateLike(Protocol):
    """What the report needs of a gate result (:class:`medrobust.registry.gates.GateResult`).

    Attributes:
        name: the gate's name.
        passed: whether it passed.
        message: why, in words.
    """

    name: str
    passed: bool
    message: str


def markdown_report(metrics: dict[str, Any], gates: Sequence[GateLike], run_info: dict[str, Any]) -> str:
    """The evaluation as markdown.

    Args:
        metrics: the content of ``metrics.json``.
        gates: the gate results, in order.
        run_info: the train stage's ``run.json`` (method, backbone, MLflow run id).

    Returns:
        The markdown text (it links ``robustness.png`` and ``shifts.png`` in the same folder).

    Raises:
        KeyError: ``metrics`` lacks ``n_test``, ``clean``, ``whitebox`` or ``transfer``.
    """
    lines = [
        f"# Robustness report: {run_info.get('method', '?')} / {run_info.get('backbone', '?')}",
        "",
        f"MLflow run `{run_info.get('run_id', '?')}`; {metrics['n_test']} test images.",
        "",
        f"**Clean**: accuracy {metrics['clean']['accuracy']:.3f}, AUC {metrics['clean']['auc']:.3f}",
        "",
        "| setting | attack | ε | accuracy |",
        "|---|---|---|---|",
    ]
    for kind in ("whitebox", "transfer"):
        for attack, by_eps in sorted(metrics[kind].items()):
            for eps, acc in by_eps.items():
                lines.append(f"| {kind} | {attack} | {eps} | {acc:.3f} |")
    if metrics.get("masking_checks"):
        lines += ["", "## Gradient-masking checks", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['message']} |"
                  for c in metrics["masking_checks"]]
    if metrics.get("shifts"):
        sev = sorted({s for by in metrics["shifts"].values() for s in by}, key=int)
        lines += ["", f"## Natural shifts (modality {metrics.get('shifts_modality')})", "",
                  "| shift | " + " | ".join(f"severity {s}" for s in sev) + " |", "|---|" + "---|" * len(sev)]
        lines += [f"| {name} | " + " | ".join(f"{by[s]:.3f}" for s in sev) + " |"
                  for name, by in sorted(metrics["shifts"].items())]
        lines += ["", "![natural shifts](shifts.png)"]
    lines += ["", "## Gates", "", "| gate | result | detail |", "|---|---|---|"]
    lines += [f"| {g.name} | {'pass' if g.passed else '**FAIL**'} | {g.message} |" for g in gates]
    lines += ["", "![robustness curve](robustness.png)", ""]
    return "\n".join(lines)


__all__ = ["markdown_report"]
