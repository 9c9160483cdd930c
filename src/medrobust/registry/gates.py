"""Robustness gates as data: the checks a model must pass before it may become ``@champion``.

``register.gates`` in params.yaml is a list of :class:`GateSpec`. Each gate reads one figure of
``metrics.json`` by its path (``clean.accuracy``, ``{gate}.sensitivity``, ``shifts_summary.mean_accuracy``,
``slices.worst.accuracy`` …; ``{gate}`` is the gate attack at the gate ε, e.g.
``worst_case.worst_case_linf.8/255``) and has up to two thresholds:

* a **value** threshold: ``lower_bound`` (or ``upper_bound``, for ECE or Brier), applied to the point
  estimate (``use: value``) or to the conservative end of its confidence interval (``use: ci``: the
  lower bound for a ``lower_bound``, the upper bound for an ``upper_bound``);
* a **change** threshold against the current ``@champion``: ``max_regression``, absolute or relative
  (``regression``), in the direction of ``higher_is_better``. A change gate is *skipped*, and says so,
  when there is no champion, when the champion was evaluated under another suite, or when it has no
  value for this gate.

Value gates of one evaluation are computed once (:func:`check_gates`, by evaluate, which writes them
to ``gates.json``); the masking checks are a value gate (``require_masking_checks``), and so is the soundness check of the randomized-smoothing
certificates (``require_certificate_soundness``, where ``evaluate.certify`` ran it); their certified
accuracy is gated like any figure, e.g. ``{name: min_certified_accuracy, metric: certified.gate.accuracy,
lower_bound: 0.5}``. The change gates
come at registration (:func:`change_gates`), against the champion's version tags
(:func:`version_tags`: ``gate.<name>.value`` …, and ``gate.suite``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from medrobust.config import Eps, StrictModel, eps_label


class StaleEvaluationError(ValueError):
    """``metrics.json`` cannot answer the gates of params.yaml: it is stale, or lacks the gate's attack."""


class GateSpec(StrictModel):
    """One gate of ``register.gates``: a figure of ``metrics.json`` and its thresholds."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="the gate's name in decisions and tags")
    metric: str = Field(description="dotted path into metrics.json; {gate} is the gate attack at the gate ε")
    lower_bound: float | None = Field(None, ge=0.0, le=1.0)  # every gated figure is a rate, an AUC or a score in [0, 1]
    upper_bound: float | None = Field(None, ge=0.0, le=1.0)
    use: Literal["value", "ci"] = Field("value", description="value: the point estimate; ci: the CI's "
                                                              "conservative end (lower for lower_bound, upper "
                                                              "for upper_bound)")
    higher_is_better: bool | None = Field(None, description="default: true with lower_bound, false with upper_bound")
    max_regression: float | None = Field(None, ge=0.0, le=1.0, description="how much worse than @champion it may be")
    regression: Literal["absolute", "relative"] = "absolute"

    @model_validator(mode="after")
    def _one_bound(self) -> GateSpec:
        if self.lower_bound is not None and self.upper_bound is not None:
            raise ValueError(f"gate {self.name}: give lower_bound or upper_bound, not both (two gates for a band)")
        if self.lower_bound is None and self.upper_bound is None and self.max_regression is None:
            raise ValueError(f"gate {self.name}: give a lower_bound, an upper_bound or a max_regression")
        if self.higher_is_better is None and self.lower_bound is None and self.upper_bound is None:
            raise ValueError(f"gate {self.name}: a change-only gate must say higher_is_better")
        return self

    @property
    def better_higher(self) -> bool:
        """The direction of improvement."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        return self.upper_bound is None

    @property
    def change_name(self) -> str:
        """The change gate's name: ``<name>.change``."""
        return f"{self.name}.change"


def _default_gates() -> list[GateSpec]:
    return [
        GateSpec(name="clean_accuracy", metric="clean.accuracy", lower_bound=0.85, max_regression=0.02),
        GateSpec(name="robust_accuracy", metric="{gate}.accuracy", lower_bound=0.5, use="ci", max_regression=0.02),
        GateSpec(name="robust_sensitivity", metric="{gate}.sensitivity", lower_bound=0.7),
        GateSpec(name="clean_ece", metric="clean.ece", upper_bound=0.15),
        GateSpec(name="shift_accuracy", metric="shifts_summary.mean_accuracy", lower_bound=0.6),
        GateSpec(name="worst_slice", metric="slices.worst.accuracy", lower_bound=0.5),
    ]


class GatesConfig(StrictModel):
    """``register``'s gating part: the gate attack and ε, the masking checks, and the list of gates."""

    gate_attack: str = Field("worst_case_linf", description="worst_case_<norm>: the worst case over the suite at that "
                                                            "norm; or <attack>_<norm> of one evaluate.attacks entry")
    gate_eps: Eps = 8 / 255            # one of that entry's epsilons
    require_masking_checks: bool = True  # every gradient-masking check must pass
    require_certificate_soundness: bool = Field(
        True, description="where evaluate.certify ran its soundness check, it must pass (no point changed class "
                          "inside its certified radius)")
    gates: list[GateSpec] = Field(default_factory=_default_gates)

    @model_validator(mode="after")
    def _unique(self) -> GatesConfig:
        names = [g.name for g in self.gates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"register.gates: duplicate gate names {dup}")
        return self

    @property
    def gate_norm(self) -> str:
        """The gate attack's norm: ``worst_case_<norm>`` and ``<attack>_<norm>`` both end with it."""
        return self.gate_attack.rsplit("_", 1)[-1]

    @property
    def gate_path(self) -> str:
        """What ``{gate}`` expands to: ``worst_case.<gate_attack>.<ε>`` or ``whitebox.<gate_attack>.<ε>``."""
        section = "worst_case" if self.gate_attack.startswith("worst_case_") else "whitebox"
        return f"{section}.{self.gate_attack}.{eps_label(self.gate_eps)}"


@dataclass(frozen=True)
class GateResult:
    """One gate: its name, whether it passed, the value and threshold compared, and why.

    Attributes:
        name: the gate's name (``robust_accuracy``, ``robust_accuracy.change``, ``masking_checks`` …).
        passed: whether the gate passed (a skipped gate passes).
        value: the number compared (for ``use: ci`` the CI's end), or None when nothing was compared.
        threshold: the number it was compared with, or None.
        message: the comparison in words.
        kind: ``value`` (absolute), ``change`` (against the champion) or ``check`` (masking, serving).
        metric: the metrics.json path it read, when it read one.
        champion: the champion's value, for a change gate that compared.
        skipped: a change gate that could not compare (no champion, another suite, no value).
    """

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str
    kind: str = "value"
    metric: str | None = None
    champion: float | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``gates.json``, ``decision.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    """The value gates of one evaluation, and the figures they read.

    Attributes:
        results: every value gate's result, in the order of ``register.gates`` (masking last).
        values: each gate's point estimate (``name -> value``), what the champion comparison uses.
        suite: the fingerprint of the evaluation suite (``metrics.json``'s ``suite.sha256``).
    """

    results: tuple[GateResult, ...]
    values: dict[str, float]
    suite: str

    @property
    def passed(self) -> bool:
        """Every value gate passed."""
        return all(g.passed for g in self.results)

    def to_dict(self) -> dict[str, Any]:
        """``gates.json``: ``{"passed": ..., "gates": [...], "values": ..., "suite": ...}``."""
        return {"passed": self.passed, "gates": [g.to_dict() for g in self.results], "values": self.values,
                "suite": self.suite}


def resolve(metrics: dict[str, Any], path: str, gate_path: str) -> Any:
    """The value at a dotted ``path`` of ``metrics``; keys may hold dots (``0.5``), so the longest key wins.

    Args:
        metrics: ``metrics.json``.
        path: e.g. ``{gate}.sensitivity`` or ``whitebox.pgd_l2.0.5.accuracy``.
        gate_path: what ``{gate}`` expands to.

    Returns:
        What the path names (a figure ``{"value", "ci", …}``, a number …).

    Raises:
        KeyError: no such path; the message names the first part that is missing.
    """
    parts = path.replace("{gate}", gate_path).split(".")
    node: Any = metrics
    i = 0
    while i < len(parts):
        if not isinstance(node, dict):
            raise KeyError(f"{'.'.join(parts[:i])} is not a section")
        for j in range(len(parts), i, -1):  # the longest key first: "0.5" before "0"
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            raise KeyError(f"{'.'.join(parts[:i + 1])} (has: {', '.join(sorted(map(str, node))[:12])})")
    return node


def _figure(metrics: dict[str, Any], spec: GateSpec, gate_path: str) -> tuple[float | None, float | None, float | None]:
    """(value, ci_low, ci_high) of a gate's metric; bounds are None for a plain number."""
    try:
        node = resolve(metrics, spec.metric, gate_path)
    except KeyError as exc:
        raise StaleEvaluationError(
            f"gate {spec.name}: metrics.json has no {spec.metric.replace('{gate}', gate_path)} (missing "
            f"{exc.args[0]}); fix the gate's metric path in register.gates, or enable what computes it in evaluate "
            "and run `medrobust evaluate` again"
        ) from None
    if isinstance(node, dict) and "value" in node:
        lo, hi = node.get("ci_low"), node.get("ci_high")
        value = node["value"]
        return (None if value is None else float(value), None if lo is None else float(lo),
                None if hi is None else float(hi))
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node), None, None
    raise StaleEvaluationError(f"gate {spec.name}: {spec.metric} is a section, not a number; name one of its figures")


def value_gate(metrics: dict[str, Any], spec: GateSpec, gate_path: str) -> tuple[GateResult | None, float | None]:
    """A gate's value threshold, and its point estimate (for the champion comparison).

    Returns:
        ``(result, estimate)``; ``result`` is None for a change-only gate.
    """
    value, lo, hi = _figure(metrics, spec, gate_path)
    metric = spec.metric.replace("{gate}", gate_path)
    if spec.lower_bound is None and spec.upper_bound is None:
        return None, value
    lower = spec.lower_bound is not None
    bound = spec.lower_bound if lower else spec.upper_bound
    compared = value if spec.use == "value" else (lo if lower else hi)
    what = "point estimate" if spec.use == "value" else ("CI lower bound" if lower else "CI upper bound")
    if compared is None or (isinstance(compared, float) and math.isnan(compared)):
        reason = "no confidence interval" if spec.use == "ci" and value is not None else "no value (undefined here)"
        return GateResult(spec.name, False, None, bound, f"{metric}: {reason}, so its {what} cannot be checked",
                          metric=metric), value
    ok = compared >= bound if lower else compared <= bound
    sign = (">=" if ok else "<") if lower else ("<=" if ok else ">")
    return GateResult(spec.name, ok, compared, bound, f"{metric} ({what}) {compared:.3f} {sign} {bound:.3f}",
                      metric=metric), value


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
                          "require_masking_checks is set but no masking checks were run (evaluate.masking.enabled)",
                          kind="check")
    failed = [c["name"] for c in checks if not c["passed"]]
    return GateResult("masking_checks", not failed, float(len(failed)), 0.0,
                      "all gradient-masking checks passed" if not failed else f"failed: {', '.join(failed)}",
                      kind="check")


def soundness_gate(metrics: dict[str, Any]) -> GateResult | None:
    """The randomized-smoothing certificates survived an attack inside their radii (None: not checked).

    Args:
        metrics: the content of ``metrics.json`` (its ``certified.soundness``).

    Returns:
        The ``certificate_soundness`` gate; ``value`` is the number of violations, ``threshold`` 0.
    """
    check = (metrics.get("certified") or {}).get("soundness")
    if not check:
        return None
    return GateResult("certificate_soundness", bool(check["passed"]), float(check["violations"]), 0.0,
                      check["message"], kind="check")


def _check_fresh(metrics: dict[str, Any], cfg: GatesConfig) -> None:
    headline = metrics.get("headline") if isinstance(metrics.get("headline"), dict) else {}
    evaluated = (headline.get("gate_attack"), headline.get("gate_eps"))
    if evaluated != (cfg.gate_attack, eps_label(cfg.gate_eps)):
        raise StaleEvaluationError(
            f"the evaluation is stale: it was computed for the gate {evaluated[0]} at {evaluated[1]}, and "
            f"register now asks for {cfg.gate_attack} at {eps_label(cfg.gate_eps)}; run `medrobust evaluate` "
            "again (`dvc repro` does)"
        )


def check_gates(metrics: dict[str, Any], cfg: GatesConfig) -> GateReport:
    """The value gates (every gate but the champion comparison) of an evaluation.

    Args:
        metrics: the content of ``metrics.json``.
        cfg: ``register`` (its gate attack and ε, masking flag and gates).

    Returns:
        The report: each value gate's result and each gate's point estimate.

    Raises:
        StaleEvaluationError: the metrics were computed for another gate attack or ε, or lack a gate's metric.
    """
    _check_fresh(metrics, cfg)
    results, values = [], {}
    for spec in cfg.gates:
        result, value = value_gate(metrics, spec, cfg.gate_path)
        if result is not None:
            results.append(result)
        if value is not None:
            values[spec.name] = value
    if cfg.require_masking_checks:
        results.append(masking_gate(metrics))
    if cfg.require_certificate_soundness and (soundness := soundness_gate(metrics)) is not None:
        results.append(soundness)
    return GateReport(tuple(results), values, str((metrics.get("suite") or {}).get("sha256", "")))


def change_gates(report: GateReport, champion: dict[str, str] | None, cfg: GatesConfig) -> list[GateResult]:
    """Each gate's change threshold against the champion's version tags.

    Args:
        report: the candidate's value gates (its point estimates and suite).
        champion: the champion version's tags, or None when there is no champion.
        cfg: ``register``.

    Returns:
        One ``<name>.change`` result per gate with a ``max_regression``; skipped (and passed) when
        there is no champion, the champion was evaluated under another suite, or it has no value.
    """
    out = []
    for spec in (s for s in cfg.gates if s.max_regression is not None):
        name, tol = spec.change_name, float(spec.max_regression or 0.0)
        mine = report.values.get(spec.name)
        theirs = (champion or {}).get(f"gate.{spec.name}.value")
        skip = None
        if champion is None:
            skip = "no current champion: nothing to compare with"
        elif champion.get("gate.suite") != report.suite or not report.suite:
            skip = (f"the champion was evaluated under another suite ({(champion.get('gate.suite') or 'unknown')[:12]} "
                    f"vs {report.suite[:12] or 'unknown'}): not comparable, comparison skipped")
        elif theirs is None or mine is None:
            skip = f"{'the champion' if theirs is None else 'this model'} has no value for {spec.name}: comparison skipped"
        if skip:
            out.append(GateResult(name, True, mine, None, skip, kind="change", skipped=True))
            continue
        c = float(theirs)
        worse_by = (c - mine) if spec.better_higher else (mine - c)  # > 0: worse than the champion
        if spec.regression == "relative":
            worse_by = worse_by / abs(c) if c else (0.0 if worse_by <= 0 else math.inf)
        ok = worse_by <= tol + 1e-12
        limit = (c - tol if spec.better_higher else c + tol) if spec.regression == "absolute" else \
            (c * (1 - tol) if spec.better_higher else c * (1 + tol))
        unit = "" if spec.regression == "absolute" else " (relative)"
        out.append(GateResult(
            name, ok, mine, limit,
            f"{spec.name} {mine:.3f} vs champion {c:.3f}: {'worse' if worse_by > 0 else 'not worse'} by "
            f"{abs(worse_by):.3f}{unit}, tolerance {tol:.3f}", kind="change", champion=c))
    return out


def version_tags(report: GateReport, cfg: GatesConfig) -> dict[str, str]:
    """The tags a version carries so that the next candidate can be compared with it.

    ``gate.attack``, ``gate.eps``, ``gate.suite``, and per gate ``gate.<name>.value`` (its point
    estimate); per value gate also ``gate.<name>.compared`` and ``gate.<name>.threshold``. The
    verdicts (``gate.<name>.verdict``) are written once the decision is made, change gates included.
    """
    tags = {"gate.attack": cfg.gate_attack, "gate.eps": f"{cfg.gate_eps:.9g}", "gate.suite": report.suite}
    for name, value in report.values.items():
        tags[f"gate.{name}.value"] = f"{value:.6f}"
    for g in report.results:
        if g.value is not None:
            tags[f"gate.{g.name}.compared"] = f"{g.value:.6f}"
        if g.threshold is not None:
            tags[f"gate.{g.name}.threshold"] = f"{g.threshold:.6f}"
    return tags


__all__ = ["GateReport", "GateResult", "GateSpec", "GatesConfig", "StaleEvaluationError", "change_gates",
           "check_gates", "masking_gate", "resolve", "value_gate", "version_tags"]
