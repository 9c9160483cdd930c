"""Submit, schedule and list runs of the compiled pipeline on a Kubeflow Pipelines server (``kfp.Client``).

    medrobust pipeline submit   --host https://kfp.example.org --wait     # one run, params.yaml as its input
    medrobust pipeline schedule --host … --cron '0 0 2 * * *' --max-concurrency 1   # a recurring run
    medrobust pipeline runs     --host …                                 # the latest runs and their states

The pipeline package is the compiled YAML (``medrobust pipeline compile``); the run's one input,
``params_yaml``, is the text of the params file given here, so a run uses the params of the commit
that submitted it, whatever the package was compiled with. The bearer token (if the cluster needs
one: Kubeflow behind Dex/IAP, a service-account token) comes from ``$KFP_TOKEN``, never from a flag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"
FINISHED = {"SUCCEEDED", "FAILED", "SKIPPED", "ERROR", "CANCELED"}


class RemoteError(RuntimeError):
    """The KFP server refused or could not be reached; the message names the host and what to fix."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    state: str
    created_at: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


def client(host: str, namespace: str | None = None) -> Any:
    """A ``kfp.Client`` for ``host`` (token from ``$KFP_TOKEN``); a failure names the host."""
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get(TOKEN_ENV) or None)
    except Exception as exc:  # noqa: BLE001 - kfp raises several kinds (ApiException, TimeoutError, MaxRetryError)
        raise RemoteError(f"cannot reach the Kubeflow Pipelines API at {host}: {exc}. Check --host, and "
                          f"${TOKEN_ENV} if the cluster needs a token") from exc


def _api(what: str, host: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        status = getattr(exc, "status", None)
        hint = f" (HTTP {status}: check ${TOKEN_ENV} and the namespace)" if status in (401, 403) else ""
        raise RemoteError(f"{what} failed at {host}{hint}: {exc}") from exc


def _run_info(run: Any) -> RunInfo:
    state = str(getattr(run, "state", "") or "").upper()
    return RunInfo(str(run.run_id), str(getattr(run, "display_name", "") or ""), state,
                   str(getattr(run, "created_at", "") or ""))


def submit(host: str, package: Path, params_text: str, experiment: str, run_name: str | None = None,
           namespace: str | None = None, wait: bool = False, timeout_s: int = 6 * 3600,
           poll_s: float = 15.0) -> RunInfo:
    """One run of ``package`` with ``params_yaml = params_text``; with ``wait``, until it finishes."""
    kfp = client(host, namespace)
    result = _api("submitting the run", host, kfp.create_run_from_pipeline_package, str(package),
                  arguments={"params_yaml": params_text}, run_name=run_name, experiment_name=experiment,
                  namespace=namespace)
    run_id = str(result.run_id)
    log.info("submitted run %s to %s (experiment %s)", run_id, host, experiment)
    if not wait:
        return RunInfo(run_id, run_name or "", "PENDING")
    done = _api("waiting for the run", host, kfp.wait_for_run_completion, run_id, timeout=timeout_s,
                sleep_duration=poll_s)
    info = _run_info(done)
    log.info("run %s finished: %s", run_id, info.state)
    return info


def schedule(host: str, package: Path, params_text: str, experiment: str, name: str, cron: str,
             max_concurrency: int = 1, namespace: str | None = None, no_catchup: bool = True) -> str:
    """A recurring run on ``cron`` (6 fields, seconds first, as Kubeflow's scheduler reads them); its ID."""
    if len(cron.split()) != 6:
        raise RemoteError(f"--cron {cron!r}: Kubeflow wants 6 fields, seconds first (e.g. '0 0 2 * * *' "
                          "for 02:00 every day)")
    kfp = client(host, namespace)
    exp = _api("finding the experiment", host, kfp.create_experiment, name=experiment, namespace=namespace)
    job = _api("creating the recurring run", host, kfp.create_recurring_run, exp.experiment_id, name,
               cron_expression=cron, max_concurrency=max_concurrency, no_catchup=no_catchup,
               params={"params_yaml": params_text}, pipeline_package_path=str(package))
    log.info("recurring run %s on %s: %s, at most %d at once", job.recurring_run_id, host, cron, max_concurrency)
    return str(job.recurring_run_id)


def list_runs(host: str, experiment: str | None = None, namespace: str | None = None, limit: int = 20) -> list[RunInfo]:
    """The latest ``limit`` runs (newest first), of ``experiment`` if given."""
    kfp = client(host, namespace)
    experiment_id = None
    if experiment:
        experiment_id = _api("finding the experiment", host, kfp.get_experiment, experiment_name=experiment,
                             namespace=namespace).experiment_id
    response = _api("listing runs", host, kfp.list_runs, experiment_id=experiment_id, namespace=namespace,
                    page_size=limit, sort_by="created_at desc")
    return [_run_info(r) for r in (response.runs or [])]
