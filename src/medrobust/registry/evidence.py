"""Evidence bound to the model: the hashes that tie a registry decision to the exact files evaluated.

A gate is only as good as the numbers it reads. ``metrics.json`` is a file anyone can edit, and
``model.pt`` a file anyone can swap, so the registry trusts neither on its own:

* **train** tags its MLflow run with the SHA-256 of the ``model.pt`` it saved and logged
  (``medrobust.trained_model_sha256``);
* **evaluate** tags the same run with the SHA-256 of the ``model.pt`` it evaluated, of the
  ``metrics.json`` it wrote and of the ingested dataset's ``manifest.csv`` (:data:`TAGS`), and writes
  the same as ``evidence.json``;
* **register** recomputes the hashes of the files it is given and refuses — before any version is
  created or any alias moves — when one differs from what the run recorded
  (:func:`verify`): ``metrics.json was modified after evaluation``, ``evaluated model differs from the
  model being registered``.

The run's tags, not ``evidence.json``, are the reference: the local file is for people and
``dvc diff``; the tracking server is the record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medrobust.utils import sha256_file

TRAINED_MODEL_TAG = "medrobust.trained_model_sha256"
TAGS = {"model_sha256": "medrobust.evaluated_model_sha256", "metrics_sha256": "medrobust.metrics_sha256",
        "manifest_sha256": "medrobust.manifest_sha256"}


class EvidenceError(ValueError):
    """The files given to ``register`` are not the ones that were evaluated; nothing was registered."""


@dataclass(frozen=True)
class Evidence:
    """The SHA-256 hashes of one evaluation's inputs and output.

    Attributes:
        model_sha256: the evaluated ``model.pt``.
        metrics_sha256: the ``metrics.json`` evaluate wrote.
        manifest_sha256: the ingested dataset's ``manifest.csv`` (which images were evaluated).
    """

    model_sha256: str
    metrics_sha256: str
    manifest_sha256: str

    def to_dict(self) -> dict[str, str]:
        """``evidence.json``."""
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The MLflow run tags that record it (:data:`TAGS`)."""
        return {TAGS[k]: v for k, v in self.to_dict().items()}


def collect(model_sha256: str, metrics_file: str | Path, manifest_file: str | Path) -> Evidence:
    """The evidence of one evaluation: the model's hash, taken when it was loaded, and the files' hashes.

    Args:
        model_sha256: the SHA-256 of the ``model.pt`` evaluated, hashed before it was loaded.
        metrics_file: the ``metrics.json`` written.
        manifest_file: the ingested dataset's ``manifest.csv``.

    Returns:
        Their SHA-256 hashes.
    """
    return Evidence(model_sha256, sha256_file(metrics_file), sha256_file(manifest_file))


def verify(run_tags: dict[str, str], model_file: str | Path, metrics_file: str | Path) -> Evidence:
    """Check that ``model_file`` and ``metrics_file`` are the files the run trained and evaluated.

    Args:
        run_tags: the MLflow run's tags (train's and evaluate's).
        model_file: the ``model.pt`` about to be registered (the train stage's output).
        metrics_file: the ``metrics.json`` the gates are about to read.

    Returns:
        The run's recorded evidence.

    Raises:
        EvidenceError: the run has no evaluation evidence, the metrics were modified after
            evaluation, or the model differs from the one evaluated (or from the one trained and logged).
    """
    missing = [t for t in TAGS.values() if t not in run_tags]
    if missing:
        raise EvidenceError(f"the MLflow run has no evaluation evidence ({', '.join(missing)}): "
                            "run `medrobust evaluate` on this model first")
    recorded = Evidence(**{k: run_tags[t] for k, t in TAGS.items()})
    if sha256_file(metrics_file) != recorded.metrics_sha256:
        raise EvidenceError(f"metrics.json was modified after evaluation ({metrics_file}): its SHA-256 differs "
                            "from the one evaluate recorded; run `medrobust evaluate` again")
    model_hash = sha256_file(model_file)
    if model_hash != recorded.model_sha256:
        raise EvidenceError(f"evaluated model differs from the model being registered ({model_file}): its SHA-256 "
                            "differs from the one evaluate recorded; run `medrobust evaluate` on this model")
    trained = run_tags.get(TRAINED_MODEL_TAG)
    if trained is not None and trained != model_hash:
        raise EvidenceError(f"evaluated model differs from the model being registered: {model_file} is not the "
                            "model the train run logged to MLflow; run `medrobust train` and `medrobust evaluate`")
    return recorded


def run_tags(run_id: str) -> dict[str, Any]:
    """The tags of MLflow run ``run_id`` (the tracking URI must be configured).

    Args:
        run_id: the train stage's run (evaluate logs into it too).

    Returns:
        ``{tag: value}``.
    """
    from mlflow import MlflowClient

    return dict(MlflowClient().get_run(run_id).data.tags)


__all__ = ["TAGS", "TRAINED_MODEL_TAG", "Evidence", "EvidenceError", "collect", "run_tags", "verify"]
