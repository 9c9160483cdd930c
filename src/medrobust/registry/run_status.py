"""A pipeline run's final status, recorded where people look: a JSON artifact and an MLflow run.

The Kubeflow pipeline's ``dsl.ExitHandler`` runs :func:`record` after every other task, whether they
succeeded or not, with Kubeflow's ``PipelineTaskFinalStatus``. A scheduled run that failed at 03:00
is then visible in the MLflow UI (a run named ``pipeline-failed`` with tag
``medrobust.pipeline_state=FAILED``) and in the run's ``run_status`` artifact, not only in the
cluster's logs.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from medrobust.registry.tracking import MlflowConfig, configure
from medrobust.utils import atomic_write_json

log = logging.getLogger(__name__)

STATE_TAG = "medrobust.pipeline_state"
KIND_TAG = "medrobust.kind"


def record(cfg: MlflowConfig, status: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write the final status to ``out`` (JSON) and to an MLflow run of ``cfg.experiment``; the record.

    Args:
        cfg: the ``mlflow`` section.
        status: ``state`` (SUCCEEDED, FAILED, CANCELLED), ``pipeline_job_resource_name``,
            ``pipeline_task_name``, ``error_code`` and ``error_message``, as Kubeflow reports them.
        out: the JSON file to write.
    """
    import mlflow

    state = str(status.get("state") or "UNKNOWN").upper()
    doc = {"state": state, "pipeline_run": str(status.get("pipeline_job_resource_name") or ""),
           "task": str(status.get("pipeline_task_name") or ""), "error_code": status.get("error_code"),
           "error_message": str(status.get("error_message") or ""),
           "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    atomic_write_json(Path(out), doc)
    configure(cfg)
    with mlflow.start_run(run_name=f"pipeline-{state.lower()}",
                          tags={STATE_TAG: state, KIND_TAG: "pipeline-status", "medrobust.pipeline_run": doc["pipeline_run"]}):
        mlflow.log_dict(doc, "pipeline_status.json")
    (log.info if state == "SUCCEEDED" else log.error)("pipeline run %s ended %s%s", doc["pipeline_run"] or "(local)",
                                                      state, f": {doc['error_message']}" if doc["error_message"] else "")
    return doc
