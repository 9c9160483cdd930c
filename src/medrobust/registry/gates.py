"""Robustness gates: the checks a model must pass before it may become ``@champion``.

Three gates, thresholds from ``register.gates`` in params.yaml:

* ``min_clean_accuracy`` — clean test accuracy;
* ``min_robust_accuracy`` — white-box robust accuracy of ``gate_attack`` at ``gate_eps``;
* ``no_regression_vs_champion`` — neither number may be worse than the current champion's by more
  than ``champion_tolerance`` (skipped, and said so, when there is no champion or it was gated
  under a different attack/ε).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medrobust.config import GatesConfig


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eps_label(eps: float) -> str:
    """``8/255`` when ε is a whole number of 1/255 steps, else the decimal."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.6g}"


def gate_metrics(metrics: dict[str, Any], gates: GatesConfig) -> tuple[float, float]:
    """(clean accuracy, robust accuracy at the gate) from an evaluate ``metrics.json``."""
    clean = float(metrics["clean"]["accuracy"])
    try:
        robust = float(metrics["whitebox"][gates.gate_attack][eps_label(gates.gate_eps)])
    except KeyError:
        raise KeyError(
            f"metrics have no white-box result for {gates.gate_attack} at {eps_label(gates.gate_eps)}; "
            "add it to evaluate.attacks or change register.gates"
        ) from None
    return clean, robust


def masking_gate(metrics: dict[str, Any]) -> GateResult:
    """Every gradient-masking check passed (fails when they were not run)."""
    checks = metrics.get("masking_checks")
    if not checks:
        return GateResult("masking_checks", False, None, None,
                          "require_masking_checks is set but no masking checks were run (evaluate.masking.enabled)")
    failed = [c["name"] for c in checks if not c["passed"]]
    return GateResult("masking_checks", not failed, float(len(failed)), 0.0,
                      "all gradient-masking checks passed" if not failed else f"failed: {', '.join(failed)}")


def absolute_gates(metrics: dict[str, Any], gates: GatesConfig) -> list[GateResult]:
    clean, robust = gate_metrics(metrics, gates)
    where = f"{gates.gate_attack} at ε={eps_label(gates.gate_eps)}"
    masking = [masking_gate(metrics)] if gates.require_masking_checks else []
    return [
        GateResult("min_clean_accuracy", clean >= gates.min_clean_accuracy, clean, gates.min_clean_accuracy,
                   f"clean accuracy {clean:.3f} {'>=' if clean >= gates.min_clean_accuracy else '<'} "
                   f"{gates.min_clean_accuracy:.3f}"),
        GateResult("min_robust_accuracy", robust >= gates.min_robust_accuracy, robust,
                   gates.min_robust_accuracy,
                   f"robust accuracy ({where}) {robust:.3f} "
                   f"{'>=' if robust >= gates.min_robust_accuracy else '<'} {gates.min_robust_accuracy:.3f}"),
    ] + masking


def champion_gate(
    clean: float, robust: float, champion: dict[str, str] | None, gates: GatesConfig
) -> GateResult:
    """Compare with the champion's gate tags (``gate.clean_accuracy`` …); ``None``: no champion."""
    name = "no_regression_vs_champion"
    if champion is None:
        return GateResult(name, True, None, None, "no current champion: nothing to compare with")
    if champion.get("gate.attack") != gates.gate_attack or abs(
        float(champion.get("gate.eps", "nan")) - gates.gate_eps
    ) > 1e-9:
        return GateResult(name, True, None, None,
                          f"champion was gated under {champion.get('gate.attack')} at ε={champion.get('gate.eps')}; "
                          "not comparable, comparison skipped")
    c_clean, c_robust = float(champion["gate.clean_accuracy"]), float(champion["gate.robust_accuracy"])
    tol = gates.champion_tolerance
    ok = clean >= c_clean - tol and robust >= c_robust - tol
    return GateResult(name, ok, robust, c_robust - tol,
                      f"clean {clean:.3f} vs champion {c_clean:.3f}, robust {robust:.3f} vs champion "
                      f"{c_robust:.3f} (tolerance {tol:.3f})")
