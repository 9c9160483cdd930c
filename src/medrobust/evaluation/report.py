"""The evaluation for people: ``report.html`` (everything, one self-contained page) and ``report.md``
(the short summary). Both open with the decision and the headline table; every figure is printed
as ``value [95% CI]`` and says how many images it rests on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from medrobust.evaluation.document import Document
from medrobust.evaluation.format import fmt, fmt_n, worst_shift

CLINICAL = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "roc_auc", "pr_auc", "brier",
            "ece")


class GateLike(Protocol):
    """What the report needs of a gate result (:class:`medrobust.registry.gates.GateResult`)."""

    name: str
    passed: bool
    message: str


def _headline(doc: Document, metrics: dict[str, Any], gates: Sequence[GateLike], passed: bool) -> None:
    head = metrics["headline"]
    doc.banner(f"Gates {'PASS' if passed else 'FAIL'} — robust accuracy {fmt(head.get('robust_accuracy'))} "
               f"({head['gate_attack']}, ε={head['gate_eps']}), clean accuracy {fmt(head['clean_accuracy'])}, on "
               f"{metrics['n_test']} test images of {metrics.get('n_patients')} patients.", passed)
    clean = metrics["clean"]
    rows = [["clean accuracy", fmt_n(clean["accuracy"])],
            [f"robust accuracy, {head['gate_attack']} at ε={head['gate_eps']} (headline)", fmt_n(head.get("robust_accuracy"))],
            ["sensitivity at the operating point", fmt_n(clean["sensitivity"])],
            ["specificity at the operating point", fmt_n(clean["specificity"])],
            ["ROC AUC", fmt_n(clean["roc_auc"])], ["ECE (15 bins, after temperature scaling)", fmt_n(clean["ece"])]]
    fnr = (metrics.get("targeted_false_negative_rate") or {})
    for key, by_eps in fnr.items():
        if head["gate_eps"] in by_eps:
            rows.append([f"attack-induced false-negative rate, {key} at ε={head['gate_eps']}", fmt_n(by_eps[head['gate_eps']])])
    shift = worst_shift(metrics)
    if shift:
        rows.append([f"worst natural shift ({shift[0]}): mean accuracy over severities", fmt_n(shift[1]["mean_accuracy"])])
    doc.table(["figure", "value [95% CI] (images)"], rows)
    doc.table(["gate", "result", "detail"], [[g.name, "PASS" if g.passed else "FAIL", g.message] for g in gates])


def _robustness(doc: Document, metrics: dict[str, Any]) -> None:
    doc.h2("Robustness")
    doc.p("White-box attacks on the model itself, and the worst case over the suite per norm and ε (a point counts "
          "as robust only if it survives every attack, as AutoAttack counts). Attack success rate: the share of "
          "clean-correct images the attack flips.")
    rows = []
    for section in ("worst_case", "whitebox"):
        for attack, by_eps in metrics.get(section, {}).items():
            for eps, m in by_eps.items():
                rows.append([attack, eps, fmt(m["accuracy"]), fmt(m["attack_success_rate"]), fmt(m["sensitivity"]),
                             fmt(m["specificity"]), fmt(m["roc_auc"])])
    doc.table(["attack", "ε", "robust accuracy", "attack success", "sensitivity", "specificity", "ROC AUC"], rows)
    doc.img("robustness.png", "robust accuracy against epsilon with 95% bands")
    fnr = metrics.get("targeted_false_negative_rate")
    if fnr:
        doc.h3("The dangerous direction: a finding made to look normal")
        doc.p("Each finding the model detects at the operating point is pushed towards the negative class by the "
              "targeted version of each attack; the rate is the share it then misses.")
        doc.table(["attack", "ε", "attack-induced false-negative rate"],
                  [[k, e, fmt_n(v)] for k, by in fnr.items() for e, v in by.items()])
    if metrics.get("transfer"):
        doc.h3("Transfer attacks (crafted on the surrogate)")
        doc.table(["attack", "ε", "accuracy", "ROC AUC"], [[k, e, fmt(m["accuracy"]), fmt(m["roc_auc"])]
                                                           for k, by in metrics["transfer"].items() for e, m in by.items()])
    if metrics.get("masking_checks"):
        doc.h3("Gradient-masking checks")
        doc.table(["check", "result", "detail"], [[c["name"], "PASS" if c["passed"] else "FAIL", c["message"]]
                                                  for c in metrics["masking_checks"]])


def _calibration(doc: Document, metrics: dict[str, Any], has_roc: bool) -> None:
    cal = metrics["calibration"]
    doc.h2("Operating point and calibration")
    doc.p(f"Fitted on the validation split ({cal['n_val']} images), never on test: temperature T = {cal['temperature']:.3f} "
          f"(validation NLL {cal['val_nll_before']:.3f} → {cal['val_nll_after']:.3f}); the operating point is "
          + (f"P(positive) ≥ {cal['threshold']:.3f} ({cal['rule']})." if cal.get("threshold") is not None
             else "the argmax."))
    doc.table(["", "before scaling", "after scaling"], [["ECE (15 equal-width bins)", fmt(cal["ece_before"], 3),
                                                         fmt(cal["ece_after"], 3)],
                                                        ["Brier score", fmt(cal["brier_before"], 3),
                                                         fmt(cal["brier_after"], 3)]])
    doc.img("reliability.png", "reliability diagram before and after temperature scaling")
    if has_roc:
        doc.img("roc.png", "ROC curves with the operating point")
    doc.h3("Clean test split")
    doc.table(["metric", "value [95% CI]", "images"], [[k, fmt(metrics["clean"][k], 3), metrics["clean"][k]["n"]]
                                                       for k in CLINICAL if k in metrics["clean"]])


def _shifts(doc: Document, metrics: dict[str, Any]) -> None:
    if not metrics.get("shifts"):
        return
    doc.h2(f"Natural shifts (modality {metrics.get('shifts_modality')}, scored like MedMNIST-C)")
    doc.p("Mean accuracy over the severities, its relative drop from clean accuracy, and robust accuracy when the "
          "shifted images are also attacked at the gate ε.")
    rows = []
    for name, e in sorted(metrics["shifts"].items()):
        ua = e.get("under_attack") or {}
        rows.append([name, fmt(e["mean_accuracy"]), fmt(e["relative_drop"]), fmt(ua.get("robust_accuracy")),
                     fmt(ua.get("relative_drop"))])
    doc.table(["shift", "mean accuracy", "relative drop", "robust accuracy under shift", "relative drop"], rows)
    doc.img("shifts.png", "accuracy against severity per shift with 95% bands")


def _slices(doc: Document, metrics: dict[str, Any]) -> None:
    slices = metrics.get("slices") or {}
    doc.h2("Slices")
    rows = []
    for column, by_value in slices.get("columns", {}).items():
        for value, e in by_value.items():
            if e.get("too_small"):
                rows.append([column, value, e["n"], f"too small (< {slices['min_slice_size']})", "", ""])
            else:
                rows.append([column, value, e["n"], fmt(e["clean"]["accuracy"]), fmt(e["clean"]["sensitivity"]),
                             fmt(e.get("robust_accuracy"))])
    doc.table(["column", "value", "images", "accuracy", "sensitivity", "robust accuracy"], rows)
    worst = slices.get("worst")
    absent = slices.get("absent_columns") or []
    doc.p((f"Weakest slice: **{worst['column']} = {worst['value']}** ({worst['by']} {worst['score']:.2f}). "
           if worst else "") + (f"Not in the manifest: {', '.join(absent)}." if absent else ""))


def _certified(doc: Document, metrics: dict[str, Any]) -> None:
    section = metrics.get("certified")
    if not section:
        return
    doc.h2("Certified robustness (randomized smoothing)")
    doc.p(f"A lower bound on robustness for any L2 attack (Cohen et al. 2019): the smoothed classifier's class on "
          f"{section['n_images']} test images, certified with n0 = {section['n0']}, n = {section['n']} noisy samples "
          f"each; every certificate holds with probability ≥ {1 - section['alpha']:g}. Radii are L2 norms in [0, 1] "
          f"pixel units over {section['image_values']} pixel values (L∞ equivalent in 1/255 in brackets).")
    radii = list(next(iter(section["sigma"].values()))["accuracy"])
    header = ["σ"] + [f"r = {r} (L∞ {section['linf_equivalent_255'][r]}/255)" for r in radii] + ["abstained"]
    doc.table(header, [[s] + [fmt(e["accuracy"][r]) for r in radii] + [fmt(e["abstain"])]
                       for s, e in section["sigma"].items()])
    gate, check = section["gate"], section.get("soundness")
    doc.p(f"Gate figure: σ = {gate['sigma']:g} at r = {gate['radius']:g}: {fmt(gate['accuracy'])}. "
          + (f"Soundness check {'passed' if check['passed'] else '**FAILED**'}: {check['message']}." if check else
             "No soundness check was run."))
    doc.img("certified.png", "certified accuracy against the L2 radius per σ with 95% bands")


def build_report(metrics: dict[str, Any], gates: Sequence[GateLike], passed: bool, run_info: dict[str, Any],
                 card: Document | None = None, images: Sequence[str] = ()) -> Document:
    """The full report: decision and headline, then robustness, calibration, shifts, slices, saliency, model card.

    Args:
        metrics: the content of ``metrics.json``.
        gates: the gate results, in order.
        passed: whether every gate passed.
        run_info: the train stage's ``run.json`` (method, backbone, MLflow run id).
        card: the model card, included at the end.
        images: the PNG files written next to the report (a missing one is left out).
    """
    doc = Document(f"Robustness report: {run_info.get('method', '?')} / {run_info.get('backbone', '?')}")
    _headline(doc, metrics, gates, passed)
    _robustness(doc, metrics)
    _calibration(doc, metrics, "roc.png" in images)
    _shifts(doc, metrics)
    _slices(doc, metrics)
    _certified(doc, metrics)
    if "saliency.png" in images:
        doc.h2("Where the model looks")
        doc.p("Grad-CAM and input-gradient saliency of the true class (captum), for clean test images and their "
              "adversarial versions at the gate ε; first images the attack did not flip, then images it flipped.")
        doc.img("saliency.png", "saliency grid")
    iv = metrics["intervals"]
    doc.h2("How to read the intervals")
    doc.p(f"Intervals are {iv['level']:.0%}: Wilson score intervals for proportions; percentile intervals of a bootstrap "
          f"that resamples patients ({iv['bootstrap_resamples']} resamples, seed {iv['bootstrap_seed']}) for AUC, Brier, "
          f"ECE, balanced accuracy and shift summaries. MLflow run `{run_info.get('run_id', '?')}`.")
    if card is not None:
        doc.include(card)
    return doc


def summary(metrics: dict[str, Any], gates: Sequence[GateLike], passed: bool, run_info: dict[str, Any]) -> Document:
    """``report.md``: the decision, the headline table, the gates and the robustness table.

    Args:
        metrics: the content of ``metrics.json``.
        gates: the gate results.
        passed: whether every gate passed.
        run_info: the train stage's ``run.json`` (method, backbone).

    Returns:
        The summary document.
    """
    doc = Document(f"Robustness report: {run_info.get('method', '?')} / {run_info.get('backbone', '?')}")
    _headline(doc, metrics, gates, passed)
    _robustness(doc, metrics)
    doc.p("Everything else — calibration, natural shifts, slices, saliency and the model card — is in `report.html`.")
    return doc


__all__ = ["CLINICAL", "GateLike", "build_report", "summary"]
