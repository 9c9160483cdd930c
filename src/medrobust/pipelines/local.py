"""Run the Kubeflow DAG on this machine with kfp.local's SubprocessRunner (no cluster needed).

Every task runs as a subprocess of the current Python environment; artifacts go under
``pipeline_root/<pipeline>-<timestamp>/<task>/<output>``. GPU, node-selector and secret settings
are ignored by the local runner (it warns). MLflow goes to the same store as the DVC pipeline.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from medrobust.params import Params, params_as_text
from medrobust.pipelines.dag import build_pipeline
from medrobust.registry.tracking import tracking_uri

log = logging.getLogger(__name__)


def run_local(params: Params, params_path: str | Path, pipeline_root: str | Path) -> Path:
    """Run the pipeline locally with kfp.local's SubprocessRunner.

    Sets ``MLFLOW_TRACKING_URI`` (absolute) and puts this interpreter's folder first on ``PATH`` in this
    process, so that every task inherits them.

    Args:
        params: the validated params (for the MLflow store).
        params_path: the params file every task receives.
        pipeline_root: where kfp.local keeps the runs' artifacts.

    Returns:
        This run's folder (``<root>/medrobust-<timestamp>``).

    Raises:
        ConfigError: the params file is missing or invalid.
    """
    from kfp import local

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(params.mlflow)  # absolute, inherited by every task
    # tasks run `python3 -m kfp.dsl.executor_main`: make it this environment's interpreter
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    text = params_as_text(params_path)
    pipeline = build_pipeline(text)
    before = set(root.iterdir())
    pipeline(params_yaml=text)
    (run_dir,) = set(root.iterdir()) - before
    log.info("kfp.local pipeline finished; artifacts under %s", run_dir)
    return run_dir
