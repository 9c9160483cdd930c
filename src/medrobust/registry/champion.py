"""The MLflow model registry: versions, the ``@champion`` and ``@challenger`` aliases, and the tags
that explain a decision.

Model *stages* are deprecated in MLflow 3; promotion is an alias plus tags:

* ``@champion`` + ``validation_status=passed`` — passed every gate, the champion comparison included;
* ``@challenger`` + ``validation_status=challenger`` — passed every value gate but not the comparison
  with the champion (``failed_gates`` names it): a candidate worth a look, not a promotion;
* ``validation_status=rejected`` + ``failed_gates`` — failed a value gate; no alias moves.

Each version also carries its gate numbers as tags (``gate.<name>.value``, ``gate.suite``,
``gate.attack``, ``gate.eps``), so the next candidate is compared with the champion without
re-evaluating it.

Moving ``@champion`` is a compare-and-set under a lease (:func:`promotion_lease`): re-read the
champion, decide, set the alias, read it back (:func:`set_alias_verified`), and retry, a bounded
number of times, when another writer got there first.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medrobust.registry.config import PromotionConfig
from medrobust.registry.gates import GateReport, GatesConfig, GateResult, version_tags
from medrobust.registry.tracking import INTERRUPTED_TAG, OWNER_TAG, owner, owner_is_gone

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

    mv = mlflow.register_model(model_uri, name, tags={"medrobust.run_id": run_id, OWNER_TAG: owner()})
    return str(mv.version)


INCOMPLETE = "incomplete"


def mark_incomplete(client: Any, name: str) -> list[str]:
    """Tag ``validation_status=incomplete`` on versions a killed register left without a verdict.

    A version gets its ``validation_status`` only once its gates are decided; one without it, made by a
    process of this machine that has exited, was interrupted after "Created version" (``kill -9``, a lost
    node). Its run is registered again by the next register, which resumes that version.

    Returns:
        The versions tagged.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    marked = []
    for v in found:
        if "validation_status" not in v.tags and owner_is_gone(v.tags.get(OWNER_TAG)):
            client.set_model_version_tag(name, v.version, "validation_status", INCOMPLETE)
            client.set_model_version_tag(name, v.version, INTERRUPTED_TAG,
                                         f"process {v.tags.get(OWNER_TAG)} died before the gates were recorded")
            log.warning("%s version %s was left without a verdict by a process that died: tagged "
                        "validation_status=incomplete", name, v.version)
            marked.append(str(v.version))
    return marked


def tag_gate_numbers(client: Any, name: str, version: str, report: GateReport, gates: GatesConfig,
                     run_info: dict[str, Any]) -> None:
    """Store the gate numbers (and the method/backbone) on the version, for the next comparison.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version to tag.
        report: the value gates of the version's evaluation.
        gates: ``register`` (the gate attack, ε and gates).
        run_info: the train stage's ``run.json`` (``method``, ``backbone``; empty when absent).

    Tags written: :func:`medrobust.registry.gates.version_tags` (``gate.<name>.value`` …, ``gate.suite``),
    ``medrobust.method`` and ``medrobust.backbone``.
    """
    tags = {**version_tags(report, gates), "medrobust.method": run_info.get("method", ""),
            "medrobust.backbone": run_info.get("backbone", "")}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


class LeaseError(RuntimeError):
    """The promotion lease could not be taken within ``register.promotion.retries`` attempts."""


class LostRace(RuntimeError):
    """The alias did not hold what this run set: another writer moved it; decide again."""


def lease_name(name: str) -> str:
    """The registered model used as the promotion lease of ``name``."""
    return f"{name}--promotion-lease"


@contextmanager
def promotion_lease(client: Any, name: str, cfg: PromotionConfig) -> Iterator[str]:
    """Hold the promotion lease of ``name``: only one writer at a time reads the champion and moves it.

    The lease is a registered model named :func:`lease_name`. Creating a registered model is atomic in
    every MLflow store (a unique name in sqlite and PostgreSQL, behind the REST server too): one
    writer creates it and the others get ``RESOURCE_ALREADY_EXISTS`` and wait, with an exponential
    backoff, up to ``cfg.retries`` attempts. A lease older than ``cfg.lease_s`` belongs to a writer that
    died, and is broken. The holder deletes it on the way out, whatever happened inside.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        cfg: ``register.promotion``.

    Yields:
        This holder's token (also the lease's ``holder`` tag).

    Raises:
        LeaseError: the lease stayed taken for every attempt.
    """
    from mlflow.exceptions import MlflowException

    lease, token = lease_name(name), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    wait = cfg.backoff_s
    for attempt in range(1, cfg.retries + 1):
        try:
            client.create_registered_model(lease, tags={"holder": token, "purpose": "medrobust promotion lease"},
                                           description=f"held while {name}@champion is decided; safe to delete "
                                                       f"after {cfg.lease_s:.0f} s")
            break
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) and "already exists" not in str(exc):
                raise
        try:
            held = client.get_registered_model(lease)
            age = time.time() - held.creation_timestamp / 1000.0
            if age > cfg.lease_s:
                log.warning("breaking a stale promotion lease of %s (held %.0f s by %s)", name, age,
                            held.tags.get("holder"))
                client.delete_registered_model(lease)
                continue
        except MlflowException:
            continue  # released meanwhile: try again at once
        log.debug("promotion lease of %s is taken (attempt %d/%d); waiting %.2f s", name, attempt, cfg.retries, wait)
        time.sleep(wait * (0.5 + random.random()))
        wait = min(wait * 2, 5.0)
    else:
        raise LeaseError(f"could not take the promotion lease of {name} in {cfg.retries} attempts: another "
                         f"registration holds it. If none runs, delete the registered model {lease!r}")
    try:
        yield token
    finally:
        try:
            held = client.get_registered_model(lease)
            if held.tags.get("holder") == token:
                client.delete_registered_model(lease)
        except MlflowException:
            pass


def still_holding(client: Any, name: str, token: str) -> bool:
    """Whether the lease of ``name`` is still this holder's (not broken as stale meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lease_name(name)).tags.get("holder") == token
    except MlflowException:
        return False


def set_alias_verified(client: Any, name: str, alias: str, version: str) -> None:
    """Set ``name@alias`` to ``version`` and read it back.

    Raises:
        LostRace: the alias reads back as another version.
    """
    client.set_registered_model_alias(name, alias, version)
    now = str(client.get_model_version_by_alias(name, alias).version)
    if now != str(version):
        raise LostRace(f"{name}@{alias} reads {now} right after it was set to {version}")


def promote(client: Any, name: str, version: str) -> None:
    """Move ``@champion`` to ``version`` and tag it ``validation_status=passed``.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version that passed every gate.
    """
    set_alias_verified(client, name, CHAMPION, version)
    client.set_model_version_tag(name, version, "validation_status", "passed")


def make_challenger(client: Any, name: str, version: str, failed: list[GateResult]) -> None:
    """Move ``@challenger`` to ``version``: it passed the value gates, not the champion comparison.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version.
        failed: the comparison gates it failed; their names are joined with commas.
    """
    set_alias_verified(client, name, CHALLENGER, version)
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


__all__ = ["CHALLENGER", "CHAMPION", "LeaseError", "LostRace", "current_champion", "find_version", "lease_name",
           "make_challenger", "promote", "promotion_lease", "register_version", "reject", "set_alias_verified",
           "still_holding", "tag_gate_numbers"]
