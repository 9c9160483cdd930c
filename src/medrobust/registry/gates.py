"""Robustness gates: the checks a model must pass before it may become ``@champion``.

Thresholds from ``register.gates`` in params.yaml (:class:`GatesConfig`):

* ``min_clean_accuracy`` — clean test accuracy;
* ``min_robust_accuracy`` — robust accuracy of ``gate_attack`` at ``gate_eps``: by default the worst case
  over the whole attack suite at that norm and ε (``worst_case_linf``: a point counts only if it
  survives every attack), or one attack of the suite (``pgd_linf``);
* ``masking_checks`` — every gradient-masking check passed (``require_masking_checks``);
* ``no_regression_vs_champion`` — neither number may be worse than the current champion's by more
  than ``champion_tolerance`` (skipped, and said so, when there is no champion or it was gated
  under a different attack/ε).

:func:`check_gates` computes the absolute gates once from ``metrics.json`` (the evaluate stage's
result carries them); :func:`champion_gate` adds the comparison at registration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field

from medrobust.config import Eps, StrictModel, eps_label


class StaleEvaluationError(ValueError):
    """``metrics.json`` cannot answer the gates of params.yaml: it is stale, or lacks the gate's attack."""


class GatesConfig(StrictModel):
    """``register.gates``: the thresholds a model must meet to become ``@champion``."""

    min_clean_accuracy: float = Field(0.85, ge=0.0, le=1.0)
    min_robust_accuracy: float = Field(0.5, ge=0.0, le=1.0)
    gate_attack: str = Field("worst_case_linf", description="worst_case_<norm>: the worst case over the suite at that "
                                                            "norm; or <attack>_<norm> of one evaluate.attacks entry")
    gate_eps: Eps = 8 / 255            # one of that entry's epsilons
    champion_tolerance: float = Field(0.02, ge=0.0, le=1.0)
    require_masking_checks: bool = True  # every gradient-masking check must pass


@dataclass(frozen=True)
class GateResult:
    """One gate: its name, whether it passed, the value and threshold compared, and why.

    Attributes:
        name: the gate's name (e.g. ``min_robust_accuracy``).
        passed: whether the gate passed.
        value: the candidate's number, or None when nothing was compared.
        threshold: the number it was compared with, or None.
        message: the comparison in words.
    """

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``gates.json``, ``decision.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    """The absolute gates of one evaluation, and the two numbers they rest on.

    Attributes:
        clean_accuracy: clean test accuracy.
        robust_accuracy: robust accuracy of the gate attack at the gate ε.
        results: every absolute gate's result, in order.
    """

    clean_accuracy: float
    robust_accuracy: float
    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        """Every gate passed."""
        return all(g.passed for g in self.results)

    def to_dict(self) -> dict[str, Any]:
        """``gates.json``: ``{"passed": ..., "gates": [...]}``."""
        return {"passed": self.passed, "gates": [g.to_dict() for g in self.results]}


def gate_metrics(metrics: dict[str, Any], gates: GatesConfig) -> tuple[float, float]:
    """(clean accuracy, robust accuracy at the gate) from an evaluate ``metrics.json``.

    Args:
        metrics: the content of ``metrics.json``.
        gates: ``register.gates`` (``gate_attack``, ``gate_eps``).

    Returns:
        ``(clean, robust)``, both in [0, 1].

    Raises:
        StaleEvaluationError: the evaluation is stale (computed for another gate attack or ε), or
            has no result for the gate attack at the gate ε.
    """
    headline = metrics.get("headline") if isinstance(metrics.get("headline"), dict) else {}
    evaluated = (headline.get("gate_attack"), headline.get("gate_eps"))
    if evaluated != (gates.gate_attack, eps_label(gates.gate_eps)):
        raise StaleEvaluationError(
            f"the evaluation is stale: it was computed for the gate {evaluated[0]} at {evaluated[1]}, and "
            f"register.gates now asks for {gates.gate_attack} at {eps_label(gates.gate_eps)}; run `medrobust evaluate` "
            "again (`dvc repro` does)"
        )
    clean = float(metrics["clean"]["accuracy"]["value"])
    section = "worst_case" if gates.gate_attack.startswith("worst_case_") else "whitebox"
    try:
        robust = float(metrics[section][gates.gate_attack][eps_label(gates.gate_eps)]["accuracy"]["value"])
    except (KeyError, TypeError):
        raise StaleEvaluationError(
            f"metrics have no robust accuracy of {gates.gate_attack} at {eps_label(gates.gate_eps)}; "
            "add it to evaluate.attacks or change register.gates"
        ) from None
    return clean, robust


def masking_gate(metrics: dict[str, Any]) -> GateResult:
    """Every gradient-masking check passed (fails when they were not run).

    Args:
        metrics: the content of ``metrics.json`` (its ``masking_checks``).

    Returns:
        The ``masking_checks`` gate; ``value`` is the number of failed checks, ``threshold`` 0.
    """
    checks = metrics.get("masking_checks")
    if not checks:
        return GateResult("masking_checks", False, None, None,
                          "require_masking_checks is set but no masking checks were run (evaluate.masking.enabled)")
    failed = [c["name"] for c in checks if not c["passed"]]
    return GateResult("masking_checks", not failed, float(len(failed)), 0.0,
                      "all gradient-masking checks passed" if not failed else f"failed: {', '.join(failed)}")


def check_gates(metrics: dict[str, Any], gates: GatesConfig) -> GateReport:
    """The absolute gates (every gate but the champion comparison) of an evaluation.

    Args:
        metrics: the content of ``metrics.json``.
        gates: ``register.gates``.

    Returns:
        The report: both numbers and every gate's result.

    Raises:
        StaleEvaluationError: the metrics are stale or lack the gate attack at the gate ε.
    """
    clean, robust = gate_metrics(metrics, gates)
    where = f"{gates.gate_attack} at ε={eps_label(gates.gate_eps)}"
    results = [
        GateResult("min_clean_accuracy", clean >= gates.min_clean_accuracy, clean, gates.min_clean_accuracy,
                   f"clean accuracy {clean:.3f} {'>=' if clean >= gates.min_clean_accuracy else '<'} "
                   f"{gates.min_clean_accuracy:.3f}"),
        GateResult("min_robust_accuracy", robust >= gates.min_robust_accuracy, robust,
                   gates.min_robust_accuracy,
                   f"robust accuracy ({where}) {robust:.3f} "
                   f"{'>=' if robust >= gates.min_robust_accuracy else '<'} {gates.min_robust_accuracy:.3f}"),
    ]
    if gates.require_masking_checks:
        results.append(masking_gate(metrics))
    return GateReport(clean, robust, tuple(results))


def champion_gate(clean: float, robust: float, champion: dict[str, str] | None, gates: GatesConfig) -> GateResult:
    """Compare with the champion's gate tags (``gate.clean_accuracy`` …).

    Passes, with the comparison skipped, when there is no champion or it was gated under another
    attack or ε; otherwise passes when neither number is below the champion's by more than
    ``champion_tolerance``.

    Args:
        clean: the candidate's clean accuracy.
        robust: the candidate's robust accuracy at the gate.
        champion: the champion version's tags, or None when there is no champion.
        gates: ``register.gates``.

    Returns:
        The ``no_regression_vs_champion`` gate; when compared, ``value`` is ``robust`` and
        ``threshold`` the champion's robust accuracy minus the tolerance.

    Raises:
        KeyError: comparable champion tags lack ``gate.clean_accuracy`` or ``gate.robust_accuracy``.
    """
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


__all__ = ["GateReport", "GateResult", "GatesConfig", "StaleEvaluationError", "champion_gate", "check_gates",
           "gate_metrics", "masking_gate"]
