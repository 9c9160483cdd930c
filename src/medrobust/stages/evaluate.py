"""Stage 4 — evaluate: clean, white-box and transfer robustness of the trained model.

* clean accuracy and ROC AUC on the test split;
* robust accuracy for every (attack, norm, ε) of ``evaluate.attacks`` (any registered attack,
  ``autoattack`` included), attacking the trained model itself, with early stopping
  (``evaluate.early_stop``: only points still classified correctly are attacked — same numbers);
* the gradient-masking checks (:mod:`medrobust.evaluation.masking`);
* accuracy under natural shifts per shift and severity (:mod:`medrobust.evaluation.shifts`);
* accuracy on every advgen transfer set (crafted on the surrogate);
* the absolute gates of ``register.gates`` (the Kubeflow DAG branches on them).

Outputs (in ``out_dir``, written atomically): ``metrics.json`` (DVC metrics), ``robustness.csv``
(DVC plot data), ``robustness.png``, ``report.md`` and ``gates.json``. All of them, and the metrics,
go to the train stage's MLflow run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from medrobust import tracking
from medrobust.attacks import from_spec
from medrobust.config import Params, parse_eps
from medrobust.data.shards import load_rows, load_split
from medrobust.evaluation.masking import run_masking_checks
from medrobust.evaluation.metrics import clean_metrics, evaluate_attack
from medrobust.evaluation.plots import plot_robustness, plot_shifts
from medrobust.evaluation.shifts import default_shifts, shift_accuracy
from medrobust.models import load_model
from medrobust.registry.gates import absolute_gates, eps_label
from medrobust.training import accuracy
from medrobust.utils import atomic_output_dir, read_json, resolve_device, seed_everything, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    out_dir: Path
    metrics: dict[str, Any]
    passes_gates: bool


def _mlflow_name(*parts: str) -> str:
    return "/".join(p.replace("/", "_") for p in parts)


def evaluate_model(
    params: Params, model: torch.nn.Module, dataset_dir: Path, advgen_dir: Path | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """(all numbers of the evaluation — the content of ``metrics.json`` —, seconds per attack run).

    The seconds are kept apart: metrics must be the same on every run with the same params.
    """
    test = load_split(dataset_dir, "test")
    cfg = params.evaluate
    metrics: dict[str, Any] = {"n_test": len(test), "clean": clean_metrics(model, test.x, test.y)}
    metrics["whitebox"] = {}
    seconds: dict[str, float] = {}
    jobs = [(a, e) for a in cfg.attacks for e in a.eps]
    for spec, eps in tqdm(jobs, desc="attacks", mininterval=5):
        attack = from_spec(spec, model, eps, seed=params.seed)
        res = evaluate_attack(model, attack, test.x, test.y, cfg.batch_size, early_stop=cfg.early_stop)
        metrics["whitebox"].setdefault(spec.key, {})[eps_label(eps)] = res.accuracy
        seconds[f"{spec.key}@{eps_label(eps)}"] = round(res.seconds, 3)
        log.info("%s ε=%s: robust accuracy %.3f (%.1f s)", spec.key, eps_label(eps), res.accuracy, res.seconds)
    if cfg.masking.enabled:
        g = params.register.gates
        checks = run_masking_checks(model, test.x, test.y, metrics["whitebox"], cfg.masking, g.gate_eps,
                                    eps_label(g.gate_eps), seed=params.seed)
        metrics["masking_checks"] = [c.to_dict() for c in checks]
        for c in checks:
            (log.info if c.passed else log.warning)("masking check %s: %s — %s", c.name,
                                                     "pass" if c.passed else "FAIL", c.message)
    if cfg.shifts.enabled:
        modality = str(test.manifest["modality"].mode().iloc[0]) if "modality" in test.manifest else "default"
        names = cfg.shifts.names or default_shifts(modality)
        acc = shift_accuracy(model, test.x, test.y, names, seed=params.seed, batch_size=cfg.batch_size)
        metrics["shifts"] = {name: {str(s): by_sev[s] for s in cfg.shifts.severities} for name, by_sev in acc.items()}
        metrics["shifts_modality"] = modality
    metrics["transfer"] = {}
    if advgen_dir is not None and (advgen_dir / "manifest.csv").exists():
        adv = pd.read_csv(advgen_dir / "manifest.csv")
        for sid, rows in adv.groupby("set", sort=True):
            x, y = load_rows(advgen_dir, rows)
            key = f"{rows['attack'].iloc[0]}_{rows['norm'].iloc[0]}"
            metrics["transfer"].setdefault(key, {})[eps_label(float(rows["eps"].iloc[0]))] = accuracy(model, x, y)
    return metrics, seconds


def _curves(section: dict[str, dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    return {k: [(parse_eps(e), a) for e, a in v.items()] for k, v in section.items()}


def _report(params: Params, metrics: dict[str, Any], gates: list, run_info: dict[str, Any]) -> str:
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


def run(
    params: Params, dataset_dir: str | Path, model_dir: str | Path, advgen_dir: str | Path | None, out_dir: str | Path
) -> EvaluateResult:
    """Evaluate the model in ``model_dir`` and log everything to its MLflow run."""
    import mlflow

    seed_everything(params.seed)
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    model, _ = load_model(model_dir)
    model = model.to(resolve_device(params.device))
    run_info = read_json(model_dir / "run.json")
    metrics, seconds = evaluate_model(params, model, dataset_dir, Path(advgen_dir) if advgen_dir else None)
    gates = absolute_gates(metrics, params.register.gates)
    passes = all(g.passed for g in gates)
    g = params.register.gates
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "timing.json", {"seconds": seconds, "early_stop": params.evaluate.early_stop})
        curves, transfer = _curves(metrics["whitebox"]), _curves(metrics["transfer"])
        rows = [
            {"kind": kind, "attack": attack, "eps": eps, "eps_255": round(eps * 255, 4), "accuracy": acc}
            for kind, section in (("whitebox", curves), ("transfer", transfer))
            for attack, pts in section.items() for eps, acc in pts
        ]
        pd.DataFrame(rows).to_csv(tmp / "robustness.csv", index=False)
        plot_robustness(curves, transfer, metrics["clean"]["accuracy"], tmp / "robustness.png",
                        title=f"{run_info.get('method')} / {run_info.get('backbone')}",
                        gate=(g.gate_eps, g.min_robust_accuracy))
        if metrics.get("shifts"):
            plot_shifts(metrics["shifts"], metrics["clean"]["accuracy"], tmp / "shifts.png")
        write_json(tmp / "gates.json", {"passed": passes, "gates": [x.to_dict() for x in gates]})
        (tmp / "report.md").write_text(_report(params, metrics, gates, run_info))
        tracking.configure(params)
        with mlflow.start_run(run_id=run_info["run_id"]):
            flat = {f"clean/{k}": v for k, v in metrics["clean"].items()}
            for name, by_sev in metrics.get("shifts", {}).items():
                flat.update({f"shift/{name}/{s}": a for s, a in by_sev.items()})
            flat.update({f"masking/{c['name']}": float(c["passed"]) for c in metrics.get("masking_checks", [])})
            for kind in ("whitebox", "transfer"):
                for attack, by_eps in metrics[kind].items():
                    flat.update({_mlflow_name(kind, attack, e): a for e, a in by_eps.items()})
            mlflow.log_metrics(flat)
            mlflow.set_tag("medrobust.gates_passed", str(passes).lower())
            mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
    log.info("evaluate: clean accuracy %.3f, gates %s", metrics["clean"]["accuracy"], "passed" if passes else "FAILED")
    return EvaluateResult(Path(out_dir), metrics, passes)
