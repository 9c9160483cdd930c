"""Exit-handler component: the run's final status — shell around :func:`medrobust.registry.run_status.record`."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def pipeline_status(params_yaml: str, status: dsl.PipelineTaskFinalStatus, run_status: Output[Artifact]) -> str:
    """Record how the pipeline run ended (the ``dsl.ExitHandler`` task: it runs even when a step failed).

    Args:
        params_yaml: params.yaml as one line of JSON (its ``mlflow`` section names the store).
        status: Kubeflow's final status of the run (filled in by Kubeflow).

    Returns:
        run_status: the status as JSON (state, run, failed task, error code and message).
        Output: the final state (SUCCEEDED, FAILED or CANCELLED).
    """
    from medrobust.params import params_from_text
    from medrobust.registry.run_status import record
    from medrobust.utils import setup_logging

    setup_logging()
    doc = record(params_from_text(params_yaml).mlflow, {
        "state": status.state, "pipeline_job_resource_name": status.pipeline_job_resource_name,
        "pipeline_task_name": status.pipeline_task_name, "error_code": status.error_code,
        "error_message": status.error_message}, run_status.path)
    return doc["state"]
