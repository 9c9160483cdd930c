"""Stage 5 — register: a model version in the MLflow registry, promoted only if it passes the gates.

1. Register the train stage's logged model as a new version of ``register.model_name``.
2. Check the gates (:mod:`medrobust.registry.gates`): minimum clean accuracy, minimum robust
   accuracy at the gate ε, and no regression against the current ``@champion`` beyond a tolerance.
3. Pass: move the ``@champion`` alias to the new version and tag it ``validation_status=passed``.
   Fail: tag it ``validation_status=rejected`` and ``failed_gates=<names>``; the champion stays.
4. Write the decision as JSON either way.

Gate numbers are stored on each version as tags (``gate.clean_accuracy``, ``gate.robust_accuracy``,
``gate.attack``, ``gate.eps``) so that a later candidate can be compared with the champion without
re-evaluating it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrobust import tracking
from medrobust.config import Params
from medrobust.registry.gates import GateResult, absolute_gates, champion_gate, gate_metrics
from medrobust.utils import read_json, write_json

log = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    promoted: bool
    gates: list[GateResult]
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "promoted": self.promoted,
            "validation_status": "passed" if self.promoted else "rejected",
            "failed_gates": [g.name for g in self.gates if not g.passed],
            "gates": [g.to_dict() for g in self.gates],
            "previous_champion": self.previous_champion,
            "champion": self.version if self.promoted else self.previous_champion,
        }


def current_champion(client: Any, name: str) -> tuple[str | None, dict[str, str] | None]:
    """(version, tags) of ``name@champion``, or (None, None)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    return str(mv.version), dict(mv.tags)


def run(params: Params, model_dir: str | Path, eval_dir: str | Path, decision_path: str | Path) -> Decision:
    """Register, gate, promote or reject; write ``decision_path`` (JSON)."""
    import mlflow
    from mlflow import MlflowClient

    gcfg = params.register.gates
    run_info = read_json(Path(model_dir) / "run.json")
    metrics = read_json(Path(eval_dir) / "metrics.json")
    clean, robust = gate_metrics(metrics, gcfg)
    tracking.configure(params)
    client = MlflowClient()
    name = params.register.model_name
    prev_version, prev_tags = current_champion(client, name)

    mv = mlflow.register_model(run_info["model_uri"], name, tags={"medrobust.run_id": run_info["run_id"]})
    version = str(mv.version)
    gate_tags = {"gate.clean_accuracy": f"{clean:.6f}", "gate.robust_accuracy": f"{robust:.6f}",
                 "gate.attack": gcfg.gate_attack, "gate.eps": f"{gcfg.gate_eps:.9g}",
                 "medrobust.method": run_info.get("method", ""), "medrobust.backbone": run_info.get("backbone", "")}
    for k, v in gate_tags.items():
        client.set_model_version_tag(name, version, k, v)

    gates = absolute_gates(metrics, gcfg) + [champion_gate(clean, robust, prev_tags, gcfg)]
    promoted = all(g.passed for g in gates)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "validation_status", "passed")
        log.info("%s version %s passed every gate: now @%s (was %s)", name, version, CHAMPION, prev_version)
    else:
        failed = [g.name for g in gates if not g.passed]
        client.set_model_version_tag(name, version, "validation_status", "rejected")
        client.set_model_version_tag(name, version, "failed_gates", ",".join(failed))
        log.warning("%s version %s rejected: %s", name, version, "; ".join(g.message for g in gates if not g.passed))
    decision = Decision(name, version, promoted, gates, prev_version)
    decision_path = Path(decision_path)
    decision_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = decision_path.with_name(f".{decision_path.name}.tmp-{os.getpid()}")
    write_json(tmp, decision.to_dict())
    tmp.replace(decision_path)
    with mlflow.start_run(run_id=run_info["run_id"]):
        mlflow.log_dict(decision.to_dict(), "register/decision.json")
        mlflow.set_tag("medrobust.registered_version", version)
    return decision
