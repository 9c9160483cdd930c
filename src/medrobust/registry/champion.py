"""The MLflow model registry: versions, the ``@champion`` and ``@challenger`` aliases, and the tags
that explain a decision.

Model *stages* are deprecated in MLflow 3; promotion is an alias plus tags:

* ``@champion`` + ``validation_status=passed`` — passed every gate, the champion comparison included;
* ``@challenger`` + ``validation_status=challenger`` — passed every value gate but not the comparison
  with the champion (``failed_gates`` names it): a candidate worth a look, not a promotion;
* ``validation_status=rejected`` + ``failed_gates`` — failed a value gate; no alias moves. Each version also carries its gate
numbers as tags (``gate.clean_accuracy``, ``gate.robust_accuracy``, ``gate.attack``, ``gate.eps``), so
the next candidate is compared with the champion without re-evaluating it.
"""

from __future__ import annotations

import logging
from typing import Any

from medrobust.registry.gates import GateReport, GatesConfig, GateResult

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def current_champion(client: Any, name: str) -> tuple[str | None, dict[str, str] | None]:
    """(version, tags) of ``name@champion``, or (None, None) when there is no champion.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.

    Returns:
        ``(version, tags)`` of the version the ``@champion`` alias points to, or ``(None, None)`` when
        MLflow cannot resolve the alias (no such model or no champion yet).
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    return str(mv.version), dict(mv.tags)


def find_version(client: Any, name: str, model_sha256: str, run_id: str) -> Any | None:
    """The version of ``name`` already registered for this run or this exact model file, if any.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        model_sha256: the evaluated ``model.pt``'s SHA-256 (tag ``medrobust.model_sha256``).
        run_id: the train run (tag ``medrobust.run_id``).

    Returns:
        The oldest matching ``ModelVersion``, or None (also when the model does not exist yet).
    """
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions
            if v.tags.get("medrobust.model_sha256") == model_sha256 or v.tags.get("medrobust.run_id") == run_id]
    return min(same, key=lambda v: int(v.version)) if same else None


def register_version(client: Any, name: str, model_uri: str, run_id: str) -> str:
    """Register the logged model ``model_uri`` as a new version of ``name``; returns the version.

    Args:
        client: an ``mlflow.MlflowClient`` (unused: registration goes through ``mlflow.register_model``
            and the current tracking URI).
        name: the registered model's name (created if it does not exist).
        model_uri: the logged model's URI (the train stage's ``run.json``).
        run_id: the MLflow run that logged it, stored as the version tag ``medrobust.run_id``.

    Returns:
        The new version number, as a string.
    """
    import mlflow

    mv = mlflow.register_model(model_uri, name, tags={"medrobust.run_id": run_id})
    return str(mv.version)


def tag_gate_numbers(client: Any, name: str, version: str, report: GateReport, gates: GatesConfig,
                     run_info: dict[str, Any]) -> None:
    """Store the gate numbers (and the method/backbone) on the version, for the next comparison.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version to tag.
        report: the absolute gates of the version's evaluation (its clean and robust accuracy).
        gates: ``register.gates`` (the gate attack and ε).
        run_info: the train stage's ``run.json`` (``method``, ``backbone``; empty when absent).

    Tags written: ``gate.clean_accuracy``, ``gate.robust_accuracy`` (6 decimals), ``gate.attack``,
    ``gate.eps``, ``medrobust.method`` and ``medrobust.backbone``.
    """
    tags = {"gate.clean_accuracy": f"{report.clean_accuracy:.6f}", "gate.robust_accuracy": f"{report.robust_accuracy:.6f}",
            "gate.attack": gates.gate_attack, "gate.eps": f"{gates.gate_eps:.9g}",
            "medrobust.method": run_info.get("method", ""), "medrobust.backbone": run_info.get("backbone", "")}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(client: Any, name: str, version: str) -> None:
    """Move ``@champion`` to ``version`` and tag it ``validation_status=passed``.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version that passed every gate.
    """
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "validation_status", "passed")


def make_challenger(client: Any, name: str, version: str, failed: list[GateResult]) -> None:
    """Move ``@challenger`` to ``version``: it passed the value gates, not the champion comparison.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version.
        failed: the comparison gates it failed; their names are joined with commas.
    """
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "validation_status", "challenger")
    client.set_model_version_tag(name, version, "failed_gates", ",".join(g.name for g in failed))


def reject(client: Any, name: str, version: str, failed: list[GateResult]) -> None:
    """Tag ``version`` ``validation_status=rejected`` and ``failed_gates=<names>``; the champion stays.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version that failed.
        failed: the gates it failed; their names are joined with commas.
    """
    client.set_model_version_tag(name, version, "validation_status", "rejected")
    client.set_model_version_tag(name, version, "failed_gates", ",".join(g.name for g in failed))


__all__ = ["CHALLENGER", "CHAMPION", "current_champion", "find_version", "make_challenger", "promote",
           "register_version", "reject", "tag_gate_numbers"]
