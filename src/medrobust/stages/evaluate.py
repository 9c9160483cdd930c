"""Stage 4 — evaluate: clean, white-box and transfer robustness of the trained model.

* clean accuracy and ROC AUC on the test split;
* white-box robust accuracy for every (attack, norm, ε) of ``evaluate.attacks``, attacking the
  trained model itself;
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
from medrobust.config import Params
from medrobust.data.shards import load_rows, load_split
from medrobust.evaluation.metrics import clean_metrics, robust_accuracy
from medrobust.evaluation.plots import plot_robustness
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


def evaluate_model(params: Params, model: torch.nn.Module, dataset_dir: Path, advgen_dir: Path | None) -> dict[str, Any]:
    """All numbers of the evaluation as one nested dict (the content of ``metrics.json``)."""
    test = load_split(dataset_dir, "test")
    cfg = params.evaluate
    metrics: dict[str, Any] = {"n_test": len(test), "clean": clean_metrics(model, test.x, test.y)}
    metrics["whitebox"] = {}
    jobs = [(a, e) for a in cfg.attacks for e in a.eps]
    for spec, eps in tqdm(jobs, desc="white-box", mininterval=5):
        attack = from_spec(spec, model, eps, seed=params.seed)
        acc = robust_accuracy(model, attack, test.x, test.y, cfg.batch_size)
        metrics["whitebox"].setdefault(spec.key, {})[eps_label(eps)] = acc
        log.info("white-box %s ε=%s: accuracy %.3f", spec.key, eps_label(eps), acc)
    metrics["transfer"] = {}
    if advgen_dir is not None and (advgen_dir / "manifest.csv").exists():
        adv = pd.read_csv(advgen_dir / "manifest.csv")
        for sid, rows in adv.groupby("set", sort=True):
            x, y = load_rows(advgen_dir, rows)
            key = f"{rows['attack'].iloc[0]}_{rows['norm'].iloc[0]}"
            metrics["transfer"].setdefault(key, {})[eps_label(float(rows["eps"].iloc[0]))] = accuracy(model, x, y)
    return metrics


def _curves(section: dict[str, dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    from fractions import Fraction

    return {k: [(float(Fraction(e)), a) for e, a in v.items()] for k, v in section.items()}


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
    metrics = evaluate_model(params, model, dataset_dir, Path(advgen_dir) if advgen_dir else None)
    gates = absolute_gates(metrics, params.register.gates)
    passes = all(g.passed for g in gates)
    g = params.register.gates
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
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
        write_json(tmp / "gates.json", {"passed": passes, "gates": [x.to_dict() for x in gates]})
        (tmp / "report.md").write_text(_report(params, metrics, gates, run_info))
        tracking.configure(params)
        with mlflow.start_run(run_id=run_info["run_id"]):
            flat = {f"clean/{k}": v for k, v in metrics["clean"].items()}
            for kind in ("whitebox", "transfer"):
                for attack, by_eps in metrics[kind].items():
                    flat.update({_mlflow_name(kind, attack, e): a for e, a in by_eps.items()})
            mlflow.log_metrics(flat)
            mlflow.set_tag("medrobust.gates_passed", str(passes).lower())
            mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
    log.info("evaluate: clean accuracy %.3f, gates %s", metrics["clean"]["accuracy"], "passed" if passes else "FAILED")
    return EvaluateResult(Path(out_dir), metrics, passes)
