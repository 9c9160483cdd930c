"""MLflow helpers: where the tracking store is, one run per pipeline execution, flat params.

The tracking URI is ``$MLFLOW_TRACKING_URI`` when set (production: an MLflow server backed by
PostgreSQL + S3), else ``mlflow.tracking_uri`` from params.yaml (default: a sqlite file in the
repository, which gives tracking *and* the model registry with no server). A relative sqlite path
is anchored at the repository (:func:`repository_root`), not the current folder, so that every
process — the CLI run from any folder, DVC, ``dvc exp run --temp`` and ``--queue`` (which run in a
temporary copy of the repository under ``.dvc/tmp/exps/``, thrown away afterwards), Kubeflow's local
runner — registers into the same file; the experiment's artifacts go to ``mlartifacts/`` next to it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field

from medrobust.config import StrictModel
from medrobust.utils import pid_alive

log = logging.getLogger(__name__)


class MlflowConfig(StrictModel):
    """``mlflow``: where runs and the model registry live (``$MLFLOW_TRACKING_URI`` wins), and how
    long a stage waits for a tracking server that does not answer.

    ``http_retries``, ``http_backoff`` and ``http_timeout`` become MLflow's
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR`` and ``..._TIMEOUT`` (the
    environment variables win when set; the backoff factor is whole seconds, as MLflow reads it):
    a server that is gone costs a few seconds of exponential backoff by default (MLflow's own
    defaults, 7 retries with factor 2, wait minutes), then the stage stops with an error that
    names the server.
    """

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "medrobust"
    http_retries: int = Field(3, ge=0, le=10)
    http_backoff: int = Field(1, ge=0, le=60)
    http_timeout: int = Field(60, ge=1, le=3600)

# pip requirements recorded with logged models (saves MLflow's slow environment inference)
MODEL_PIP_REQUIREMENTS = ["torch==2.14.1", "medrobust"]


def repository_root(start: Path | None = None) -> Path:
    """The repository a relative store path belongs to.

    Inside a DVC experiment's temporary workspace (``<repo>/.dvc/tmp/exps/<tmp>/``: ``dvc exp run
    --temp`` and queued experiments) it is the original ``<repo>``; else the nearest folder at or
    above ``start`` that holds ``.dvc``; else ``start`` itself.

    Args:
        start: where to look from; None: the current directory.

    Returns:
        The folder, absolute.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(1, len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), here)


def resolve_tracking_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (relative to ``base`` or the repository).

    Args:
        uri: a tracking URI.
        base: the folder a relative sqlite path is relative to; None: :func:`repository_root`.

    Returns:
        ``sqlite:///<absolute path>`` for a relative sqlite URI; any other URI unchanged.

    Example:
        >>> resolve_tracking_uri("sqlite:///mlflow.db", Path("/repo"))
        'sqlite:////repo/mlflow.db'
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):])
        return prefix + str(((base or repository_root()) / path).resolve())
    return uri


def tracking_uri(cfg: MlflowConfig) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` (a relative sqlite path made absolute).

    Args:
        cfg: the ``mlflow`` section.

    Returns:
        The tracking URI to use (the environment variable is returned as is).
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or resolve_tracking_uri(cfg.tracking_uri)


OWNER_TAG = "medrobust.owner"          # "<host>:<pid>" of the process that opened the run or made the version
INTERRUPTED_TAG = "medrobust.interrupted"


def owner() -> str:
    """This process as :data:`OWNER_TAG` writes it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(tag: str | None) -> bool:
    """Whether the process a :data:`OWNER_TAG` names ran on this machine and has exited.

    A process on another machine (another pod) cannot be checked: it counts as alive.
    """
    host, _, pid = (tag or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))


def claim_run() -> None:
    """Tag the active run with this process (:func:`fail_interrupted_runs` checks it on the next start)."""
    import mlflow

    mlflow.set_tag(OWNER_TAG, owner())


def fail_interrupted_runs(exp_id: str) -> list[str]:
    """Mark FAILED the runs left RUNNING by a process of this machine that died (``kill -9``, OOM).

    Returns:
        The run ids marked.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    marked = []
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
        tag = run.data.tags.get(OWNER_TAG)
        if owner_is_gone(tag):
            client.set_tag(run.info.run_id, INTERRUPTED_TAG, f"process {tag} died with the run open")
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("MLflow run %s was left RUNNING by process %s, which died: marked FAILED",
                        run.info.run_id, tag)
            marked.append(run.info.run_id)
    return marked


def configure(cfg: MlflowConfig) -> str:
    """Point MLflow at the store, make sure the experiment exists, and fail the runs a killed process left open.

    Args:
        cfg: the ``mlflow`` section.

    Returns:
        The experiment id.
    """
    import mlflow

    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", cfg.http_retries),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", cfg.http_backoff),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", cfg.http_timeout)):
        os.environ.setdefault(name, str(value))
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    fail_interrupted_runs(exp_id)
    return exp_id


def unreachable(exc: BaseException) -> str | None:
    """The message for a tracking server that stopped answering, if ``exc`` (or its cause) is that.

    Args:
        exc: an exception out of a stage.

    Returns:
        One sentence naming the server and what to do, or None for any other error.
    """
    import requests

    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        text = str(exc)
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout) or (
                "API request to" in text and "failed with exception" in text):
            uri = mlflow_uri()
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            return (f"the MLflow tracking server at {uri} did not answer ({retries} retries with backoff): "
                    f"{type(exc).__name__}. Nothing was marked complete: start the server (`medrobust stack up` "
                    "for the local stack) or point $MLFLOW_TRACKING_URI at a live one, and run the stage again; "
                    "its interrupted MLflow run is marked FAILED then")
        exc = exc.__cause__ or exc.__context__
    return None


def mlflow_uri() -> str:
    """The tracking URI MLflow is set to, without credentials."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else uri


SOURCE_SECTIONS = ("pacs", "s3", "medmnist", "ham10000", "cmmd", "image_folder", "two_moons", "synthetic")


def run_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params a training run logs: what shaped this run, not every alternative params.yaml holds.

    ``train.methods`` keeps only the active method's settings (not all 16), and ``data`` only the
    active source's section (``data.pacs`` … are settings of sources this run did not read).

    Args:
        params: the params as a dict (``Params.to_dict()``).

    Returns:
        A copy, trimmed.
    """
    out = {k: v for k, v in params.items()}
    train = dict(out.get("train") or {})
    if isinstance(train.get("methods"), dict):
        train["methods"] = {train.get("method"): train["methods"].get(train.get("method"), {})}
    out["train"] = train
    data = dict(out.get("data") or {})
    out["data"] = {k: v for k, v in data.items() if k not in SOURCE_SECTIONS or k == data.get("source")}
    return out


def git_commit(start: Path | None = None) -> str | None:
    """The repository's current commit (with ``-dirty`` when tracked files changed), or None outside git.

    Args:
        start: a folder inside the repository; None: the current directory.

    Returns:
        The commit hash, or None when git or a repository is missing.
    """
    import subprocess

    try:
        cwd = start or Path.cwd()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings.

    Args:
        d: a nested mapping (e.g. the params as a dict).
        prefix: prepended to every key, joined with a dot; empty: none.

    Returns:
        A flat ``{dotted key: value}``: ints, floats, strings, bools and None kept, anything else
        (lists, tuples...) as its ``str``.

    Example:
        >>> flatten({"a": {"b": 1, "c": [1, 2]}})
        {'a.b': 1, 'a.c': '[1, 2]'}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
