"""Stage 5 — register: a model version in the MLflow registry, promoted only if it passes the gates.

0. Verify the evidence (:mod:`medrobust.registry.evidence`): the ``model.pt`` and ``metrics.json``
   handed over must hash to what train and evaluate recorded in the MLflow run; if not, stop with
   a clear error before any version is created or any alias moves.
1. Log the served model into the train run (:mod:`medrobust.registry.pyfunc`: the evaluated
   ``model.pt``, ingest's decoding settings and evaluate's temperature; a ``pytorch`` and a
   ``python_function`` flavour that takes base64 DICOM as well as arrays) and register it as a new
   version of ``register.model_name``, tagged with the SHA-256 of the evaluated model and of its
   metrics. Load it back in a fresh process with ``mlflow.pytorch`` and ``mlflow.pyfunc``: it must
   reproduce the evaluated logits and calibrated probabilities on the test split
   (:mod:`medrobust.registry.serving`, the ``serving_check`` gate).
2. Check the gates of ``register.gates`` (:mod:`medrobust.registry.gates`): each gate's value
   threshold (on the point estimate or its CI), the masking checks, and — under the promotion
   lease — each gate's change threshold against the current ``@champion``.
3. Pass: move ``@champion`` to the new version and tag it ``validation_status=passed``. Pass the
   value gates but not the champion comparison: move ``@challenger`` to it. Fail a value gate: tag
   it ``validation_status=rejected`` and ``failed_gates=<names>``; the champion stays
   (:mod:`medrobust.registry.champion`). The alias moves by compare-and-set: re-read, decide, set,
   read back, retry when another writer won.
   A run, or a model file, that already is a version is not registered again: the decision says
   ``already_registered`` and names that version. A version a killed register left without a
   verdict (made by a process of this machine that has exited) is tagged
   ``validation_status=incomplete``, and the next register of its run resumes it: gates, decision, aliases.
4. Write the decision as JSON either way (and ``report.md``: the evaluation's summary ending with
   the decision), as the version's description in Markdown, and as the run's ``register/decision.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrobust.data.shards import load_split
from medrobust.params import Params
from medrobust.registry import champion, evidence, pyfunc, tracking, versions
from medrobust.registry.config import RegisterConfig
from medrobust.registry.gates import GateReport, GateResult, change_gates, check_gates
from medrobust.registry.serving import serving_gate
from medrobust.utils import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


STATUS_TAG = {"champion": "passed", "challenger": "challenger", "rejected": "rejected"}


@dataclass(frozen=True)
class Decision:
    """The registry's decision on one version.

    Attributes:
        model_name: the registered model's name.
        version: the version registered by this run (or, when ``already_registered``, the version
            that already holds this model).
        status: ``champion`` (passed every gate), ``challenger`` (passed the value gates, not the
            comparison with the champion) or ``rejected``.
        gates: every gate's result, the champion comparison last (empty when already registered).
        previous_champion: the champion's version before this run, or None.
        evidence: the verified hashes of the evaluated model, its metrics and the dataset manifest.
        already_registered: this run or this model file was a version already; nothing changed.
    """

    model_name: str
    version: str
    status: str
    gates: list[GateResult]
    previous_champion: str | None
    evidence: dict[str, str] | None = None
    already_registered: bool = False

    @property
    def promoted(self) -> bool:
        """Whether the version is ``@champion``."""
        return self.status == "champion"

    def to_dict(self) -> dict[str, Any]:
        """``decision.json``."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "status": self.status,
            "promoted": self.promoted,
            "validation_status": STATUS_TAG.get(self.status, self.status),
            "failed_gates": [g.name for g in self.gates if not g.passed],
            "gates": [g.to_dict() for g in self.gates],
            "previous_champion": self.previous_champion,
            "champion": self.version if self.promoted else self.previous_champion,
            "already_registered": self.already_registered,
            "evidence": self.evidence,
        }


def _require(path: Path, what: str, command: str) -> None:
    """A missing input names the stage that makes it."""
    if not path.exists():
        raise FileNotFoundError(f"no {what} in {path.parent} ({path.name} is missing): run `{command}` first")


def run(params: Params, model_dir: str | Path, eval_dir: str | Path, decision_path: str | Path,
        dataset_dir: str | Path | None = None, report_path: str | Path | None = None) -> Decision:
    """Register, gate, promote or reject; write ``decision_path`` (JSON).

    Args:
        params: validated params (``register``, ``mlflow``).
        model_dir: the train stage's output (``run.json``: the MLflow run and logged model).
        eval_dir: the evaluate stage's output (``metrics.json``).
        decision_path: where the decision JSON goes (written atomically).
        dataset_dir: the ingested dataset: its test split feeds the serving check (the registered
            version, loaded in a fresh process, must give the evaluated model's logits); None: no
            serving check (the decision lists no ``serving_check`` gate).
        report_path: where ``report.md`` goes: the evaluation's summary ending with this decision
            (None: not written).

    Returns:
        The decision.

    Raises:
        FileNotFoundError: ``run.json`` or ``metrics.json`` is missing (the message names the stage to run).
        EvidenceError: the model or the metrics are not the ones evaluated; nothing was registered.
    """
    import mlflow
    from mlflow import MlflowClient

    gcfg = params.register
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    _require(model_dir / "run.json", "trained model", "medrobust train")
    _require(eval_dir / "metrics.json", "evaluation", "medrobust evaluate")
    if dataset_dir is not None:
        _require(Path(dataset_dir) / "manifest.csv", "ingested dataset", "medrobust ingest")
    run_info = read_json(model_dir / "run.json")
    tracking.configure(params.mlflow)
    proof = evidence.verify(evidence.run_tags(run_info["run_id"]), model_dir / "model.pt", eval_dir / "metrics.json")
    metrics = read_json(eval_dir / "metrics.json")
    report = check_gates(metrics, gcfg)
    client = MlflowClient()
    name = params.register.model_name
    prev_version, prev_tags = champion.current_champion(client, name)
    champion.mark_incomplete(client, name)  # versions a killed register left without a verdict

    existing = champion.find_version(client, name, proof.model_sha256, run_info["run_id"])
    resume = existing is not None and existing.tags.get("validation_status") == champion.INCOMPLETE
    if existing is not None and not resume:
        status = {v: k for k, v in STATUS_TAG.items()}.get(existing.tags.get("validation_status", ""), "rejected")
        if status == "champion" and prev_version != str(existing.version):
            status = "rejected"  # it was champion once; the alias has moved on since
        log.info("%s version %s already holds this model (run %s): nothing registered", name, existing.version,
                 run_info["run_id"])
        decision = Decision(name, str(existing.version), status, [], prev_version, proof.to_dict(), True)
        atomic_write_json(decision_path, decision.to_dict())
        if report_path is not None:
            _write_report(Path(report_path), eval_dir / "report.md", decision)
        return decision

    calibration = read_json(eval_dir / "calibration.json") if (eval_dir / "calibration.json").exists() else None
    served = pyfunc.preprocessing(params.data, calibration, proof.model_sha256)
    if resume:  # registered before a kill, gates never recorded: decide on that version now
        version = str(existing.version)
        log.warning("%s version %s: its registration was interrupted before the gates; resuming it", name, version)
    else:
        with mlflow.start_run(run_id=run_info["run_id"]):
            tracking.claim_run()
            serving_uri = pyfunc.log_serving_model(model_dir, served, tracking.MODEL_PIP_REQUIREMENTS)
        version = champion.register_version(client, name, serving_uri, run_info["run_id"])
    champion.tag_gate_numbers(client, name, version, report, gcfg, run_info)
    for key, value in {**{f"medrobust.{k}": v for k, v in proof.to_dict().items()},
                       versions.HEADLINE_TAG: versions.headline_tag(metrics),
                       "medrobust.model_card": f"runs:/{run_info['run_id']}/evaluation/model_card.md"}.items():
        client.set_model_version_tag(name, version, key, value)
    value_gates = list(report.results)
    if dataset_dir is not None:
        images = load_split(Path(dataset_dir), "test").x.numpy()
        value_gates.append(serving_gate(f"models:/{name}/{version}", model_dir, images,
                                        temperature=served["temperature"]))
    decision = _decide_and_move(client, name, version, value_gates, report, gcfg, proof.to_dict())
    client.update_model_version(name, version, description=versions.decision_markdown(decision.to_dict()))
    client.set_model_version_tag(name, version, "medrobust.decision", f"runs:/{run_info['run_id']}/register/decision.json")
    atomic_write_json(decision_path, decision.to_dict())
    if report_path is not None:
        _write_report(Path(report_path), eval_dir / "report.md", decision)
    with mlflow.start_run(run_id=run_info["run_id"]):
        tracking.claim_run()
        mlflow.log_dict(decision.to_dict(), "register/decision.json")
        if report_path is not None:
            mlflow.log_artifact(str(report_path), "register")
        mlflow.set_tag("medrobust.registered_version", version)
    return decision


def _decide_and_move(client: Any, name: str, version: str, value_gates: list[GateResult], report: GateReport,
                     gcfg: RegisterConfig, proof: dict[str, str]) -> Decision:
    """Compare with the champion and move the alias: a compare-and-set under the promotion lease.

    Under the lease: re-read ``@champion``, compute the change gates against it, set the alias and
    read it back. When the alias does not read back (another writer moved it: a lease broken as
    stale), decide again against the new champion, up to ``register.promotion.retries`` times.
    """
    for attempt in range(1, gcfg.promotion.retries + 1):
        with champion.promotion_lease(client, name, gcfg.promotion) as token:
            prev_version, prev_tags = champion.current_champion(client, name)
            change = change_gates(report, prev_tags, gcfg)
            gates = [*value_gates, *change]
            failed = [g for g in gates if not g.passed]
            try:
                if not failed:
                    status = "champion"
                    champion.promote(client, name, version)
                    if prev_version:  # what `medrobust registry rollback` returns to
                        client.set_model_version_tag(name, version, versions.PREVIOUS_CHAMPION_TAG, prev_version)
                    log.info("%s version %s passed every gate: now @%s (was %s)", name, version, champion.CHAMPION,
                             prev_version)
                elif all(g.kind == "change" for g in failed):
                    status = "challenger"
                    champion.make_challenger(client, name, version, failed)
                    log.warning("%s version %s passed the value gates but not the champion comparison: now @%s (%s)",
                                name, version, champion.CHALLENGER, "; ".join(g.message for g in failed))
                else:
                    status = "rejected"
                    champion.reject(client, name, version, failed)
                    log.warning("%s version %s rejected: %s", name, version, "; ".join(g.message for g in failed))
                if not champion.still_holding(client, name, token):
                    raise champion.LostRace("the promotion lease was broken while this run held it")
            except champion.LostRace as exc:
                log.warning("lost a promotion race (attempt %d/%d): %s; deciding again", attempt,
                            gcfg.promotion.retries, exc)
                continue
        for g in gates:
            client.set_model_version_tag(name, version, f"gate.{g.name}.verdict",
                                         "skipped" if g.skipped else ("pass" if g.passed else "fail"))
        return Decision(name, version, status, gates, prev_version, proof)
    raise champion.LeaseError(f"{name} version {version}: lost the promotion race {gcfg.promotion.retries} times")


def _write_report(path: Path, evaluation_report: Path, decision: Decision) -> None:
    """``report.md``: the evaluation's summary, ending with the registry decision."""
    head = evaluation_report.read_text() if evaluation_report.exists() else ""
    d = decision.to_dict()
    body = versions.decision_markdown(d)
    tail = (f"\n\n## Registry decision: {d['model_name']} version {d['version']}\n\n"
            + ("This model file was registered before: nothing changed.\n\n" if decision.already_registered else "")
            + body + "\n")
    atomic_write_text(path, head.rstrip() + tail)
