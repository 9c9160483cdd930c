"""Reading and steering the registry by hand: list, show, promote, rollback, and a load smoke check.

These are what a person does between pipeline runs (``medrobust registry …``):

* :func:`list_versions` — every version with its aliases, status, method, headline numbers with
  their 95% intervals, and failed gates;
* :func:`show` — one version's decision (its description) and model card;
* :func:`promote` — a manual promotion: the gates are checked again on the version's own evaluation
  (its ``metrics.json`` from the MLflow run, verified against the hash recorded at registration)
  unless forced; who and why are recorded as tags;
* :func:`rollback` — ``@champion`` back to the version it replaced, recorded on both;
* :func:`smoke_load` — load ``models:/<name>@<alias>`` with ``mlflow.pyfunc`` and predict on the
  model's logged input example (an InfraValidator-style check; the CLI runs it in its own process).
"""

from __future__ import annotations

import getpass
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from medrobust.registry.champion import CHAMPION, current_champion, set_alias_verified
from medrobust.registry.gates import GateResult, GatesConfig, change_gates, check_gates
from medrobust.utils import sha256_file

log = logging.getLogger(__name__)

PREVIOUS_CHAMPION_TAG = "medrobust.previous_champion"
HEADLINE_TAG = "medrobust.headline"


class RegistryError(ValueError):
    """A registry command cannot do what was asked (no such version, nothing to roll back to …)."""


def headline_tag(metrics: dict[str, Any]) -> str:
    """The headline numbers of an evaluation, as the compact JSON stored on its version.

    Args:
        metrics: ``metrics.json``.

    Returns:
        JSON of ``{gate_attack, gate_eps, n_test, clean_accuracy: {value, ci}, robust_accuracy: {value, ci}}``.
    """
    h = metrics.get("headline", {})

    def short(e: Any) -> Any:
        return {"value": e.get("value"), "ci": e.get("ci")} if isinstance(e, dict) else None

    return json.dumps({"gate_attack": h.get("gate_attack"), "gate_eps": h.get("gate_eps"), "n_test": h.get("n_test"),
                       "clean_accuracy": short(h.get("clean_accuracy")),
                       "robust_accuracy": short(h.get("robust_accuracy"))}, separators=(",", ":"))


def _with_ci(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    lo, hi = e.get("ci") or (None, None)
    return f"{e['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{e['value']:.3f}"


def decision_markdown(decision: dict[str, Any]) -> str:
    """A decision as Markdown: the version's description in the MLflow UI.

    Args:
        decision: ``decision.json`` (``status``, ``gates``, ``previous_champion`` …).

    Returns:
        A status line and a gate table (gate, value, threshold, champion value, verdict, why); ε is
        written as n/255, as in every metric path.
    """
    status = decision["status"]
    verdict = {"champion": "**promoted to @champion**", "challenger": "**@challenger** (not promoted)",
               "rejected": "**rejected**"}.get(status, status)
    lines = [f"{verdict}; previous champion: {decision.get('previous_champion') or 'none'}", "",
             "| gate | value | threshold | champion | verdict | why |", "|---|---:|---:|---:|---|---|"]
    for g in decision["gates"]:
        value = "–" if g["value"] is None else f"{g['value']:.3f}"
        threshold = "–" if g["threshold"] is None else f"{g['threshold']:.3f}"
        champ = "–" if g.get("champion") is None else f"{g['champion']:.3f}"
        verdict = "skipped" if g.get("skipped") else ("pass" if g["passed"] else "**FAIL**")
        lines.append(f"| {g['name']} | {value} | {threshold} | {champ} | {verdict} | "
                     f"{g['message'].replace('|', '/')} |")
    ev = decision.get("evidence") or {}
    if ev:
        lines += ["", f"Evaluated model SHA-256 `{ev.get('model_sha256', '')[:16]}…`, metrics "
                      f"`{ev.get('metrics_sha256', '')[:16]}…`."]
    return "\n".join(lines)


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"{name} has no version {version}: `medrobust registry list` shows the versions") from None


def list_versions(client: Any, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.

    Returns:
        Rows of ``version``, ``aliases``, ``status``, ``method``, ``clean`` and ``robust`` (value
        [CI] strings), ``gate`` (attack at ε), ``n_test`` and ``failed_gates``.

    Raises:
        RegistryError: no such registered model.
    """
    from mlflow.exceptions import MlflowException

    try:
        aliases_of: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        raise RegistryError(f"no registered model {name!r}: run the pipeline (`dvc repro`) first") from None
    rows = []
    for v in sorted(versions, key=lambda v: -int(v.version)):
        head = json.loads(v.tags.get(HEADLINE_TAG, "{}") or "{}")
        rows.append({"version": str(v.version), "aliases": ",".join(sorted(aliases_of.get(str(v.version), []))),
                     "status": v.tags.get("validation_status", ""), "method": v.tags.get("medrobust.method", ""),
                     "clean": _with_ci(head.get("clean_accuracy")), "robust": _with_ci(head.get("robust_accuracy")),
                     "gate": f"{head.get('gate_attack', '')} {head.get('gate_eps', '')}".strip(),
                     "n_test": head.get("n_test"), "failed_gates": v.tags.get("failed_gates", "")})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """``list_versions`` rows as an aligned text table.

    Args:
        rows: from :func:`list_versions`.

    Returns:
        The table (a header and one line per version).
    """
    cols = ["version", "aliases", "status", "method", "clean", "robust", "gate", "n_test", "failed_gates"]
    cells = [[str(r.get(c) if r.get(c) is not None else "") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)] if cells else map(len, cols)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), *(fmt.format(*row) for row in cells)])


def _artifact_text(run_id: str, path: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            return Path(local).read_text()
    except (MlflowException, OSError):
        return None


def show(client: Any, name: str, version: str) -> str:
    """One version's decision and model card, as Markdown.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version.

    Returns:
        The version's description (its decision) followed by its model card.

    Raises:
        RegistryError: no such version.
    """
    mv = _version(client, name, version)
    card = _artifact_text(mv.run_id, "evaluation/model_card.md") or "(no model card in the run's artifacts)"
    aliases = ", ".join(f"@{a}" for a in mv.aliases) or "none"
    return "\n".join([f"# {name} version {mv.version} (aliases: {aliases})", "", mv.description or "(no decision)",
                      "", card])


def _verified_metrics(client: Any, mv: Any) -> dict[str, Any]:
    """The version's ``metrics.json`` from its run, checked against the hash tagged at registration."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="evaluation/metrics.json",
                                                         dst_path=tmp))
        if sha256_file(local) != mv.tags.get("medrobust.metrics_sha256"):
            raise RegistryError(f"version {mv.version}: the run's metrics.json does not match the hash recorded at "
                                "registration; re-run the pipeline, or promote with --force and a reason")
        return json.loads(local.read_text())


def promote(client: Any, name: str, version: str, gates: GatesConfig, force: bool = False,
            reason: str = "") -> list[GateResult]:
    """Move ``@champion`` to ``version`` by hand.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.
        version: the version to promote.
        gates: ``register``: its gates, checked again on the version's own evaluation unless ``force``.
        force: promote even when a gate fails (``reason`` is then required).
        reason: why; recorded as a tag with the user's name.

    Returns:
        The gates checked (empty when forced).

    Raises:
        RegistryError: no such version, a gate fails without ``force``, or ``force`` without a reason.
    """
    mv = _version(client, name, version)
    if force and not reason.strip():
        raise RegistryError("--force needs --reason \"...\": a forced promotion must say why")
    prev, prev_tags = current_champion(client, name)
    results: list[GateResult] = []
    if not force:
        report = check_gates(_verified_metrics(client, mv), gates)
        results = [*report.results, *change_gates(report, prev_tags if prev != str(mv.version) else None, gates)]
        failed = [g for g in results if not g.passed]
        if failed:
            raise RegistryError(f"version {version} fails {', '.join(g.name for g in failed)}: "
                                + "; ".join(g.message for g in failed) + " (use --force --reason \"...\" to override)")
    set_alias_verified(client, name, CHAMPION, str(mv.version))
    tags = {"validation_status": "passed", "medrobust.promoted_by": getpass.getuser(),
            "medrobust.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "medrobust.promotion": "forced" if force else "manual, gates re-checked"}
    if reason:
        tags["medrobust.promotion_reason"] = reason
    if prev and prev != str(mv.version):
        tags[PREVIOUS_CHAMPION_TAG] = prev
    for k, v in tags.items():
        client.set_model_version_tag(name, str(mv.version), k, v)
    log.info("%s version %s is @%s (was %s)%s", name, mv.version, CHAMPION, prev, " — forced: " + reason if force else "")
    return results


def rollback(client: Any, name: str) -> tuple[str, str]:
    """Move ``@champion`` back to the version the current champion replaced.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model's name.

    Returns:
        ``(from_version, to_version)``.

    Raises:
        RegistryError: there is no champion, or it replaced none.
    """
    current, tags = current_champion(client, name)
    if current is None:
        raise RegistryError(f"{name} has no @champion to roll back")
    previous = (tags or {}).get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        raise RegistryError(f"{name}@champion (version {current}) replaced no earlier champion: nothing to roll back to")
    _version(client, name, previous)
    client.set_registered_model_alias(name, CHAMPION, previous)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(name, current, "validation_status", "rolled_back")
    client.set_model_version_tag(name, current, "medrobust.rolled_back", f"{stamp} by {getpass.getuser()} to {previous}")
    client.set_model_version_tag(name, previous, "medrobust.restored", f"{stamp} by {getpass.getuser()} from {current}")
    log.info("%s@%s rolled back: version %s -> %s", name, CHAMPION, current, previous)
    return current, previous


def smoke_load(uri: str) -> dict[str, Any]:
    """Load a registered model with ``mlflow.pyfunc`` and predict on its logged input example.

    Args:
        uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Returns:
        ``{"uri", "input_shape", "output_shape", "finite"}``.

    Raises:
        RegistryError: the model does not load, or its predictions are not finite.
    """
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(uri)
        example = model.input_example
    except (MlflowException, OSError) as exc:
        raise RegistryError(f"{uri} does not load: {exc}") from None
    if example is None:
        raise RegistryError(f"{uri} has no logged input example to predict on")
    out = model.predict(np.asarray(example, dtype=np.float32))
    out = np.asarray(out.select_dtypes("number") if hasattr(out, "select_dtypes") else out, dtype=np.float64)
    result = {"uri": uri, "input_shape": list(np.shape(example)), "output_shape": list(out.shape),
              "finite": bool(np.isfinite(out).all())}
    if not result["finite"]:
        raise RegistryError(f"{uri} loads but predicts non-finite values")
    return result


__all__ = ["HEADLINE_TAG", "PREVIOUS_CHAMPION_TAG", "RegistryError", "decision_markdown", "format_table",
           "headline_tag", "list_versions", "promote", "rollback", "show", "smoke_load"]
