"""The Kubeflow pipeline: synthesize -> ingest -> advgen -> train -> evaluate -> register.

* ``dsl.If`` gates registration on the evaluation outcome: when the absolute gates pass, the
  ``register`` task may promote the version to ``@champion`` (it still checks the champion
  comparison); otherwise ``register-rejected`` records the version with its rejection tags, so the
  registry always shows what was tried.
* advgen, train and evaluate ask for one NVIDIA GPU on the GPU node pool (accelerator type and
  limit, a node selector and a toleration through kfp-kubernetes).
* Deterministic stages are cached and retried; register is never cached (it has side effects).
* MLflow's address and credentials come from the optional Kubernetes secret ``medrobust-mlflow``;
  ingest's source credentials (PACS, S3) and the pseudonymisation key from ``medrobust-data``.

* A ``synthesize`` task exists only for a source whose data the pipeline makes itself
  (``synthetic``: its registry entry says ``synthesized``); ingest then reads its artifact. A PACS,
  a bucket or MedMNIST is read by ingest directly, so such a pipeline has no synthesize task.

The pipeline takes params.yaml (as one line of JSON) as its one parameter, defaulting to the file it
was compiled with, so it reads exactly the keys DVC reads. The DAG's shape follows that file's
``data.source``: a run that overrides ``params_yaml`` keeps the source kind it was compiled for.
"""

from kfp import dsl, kubernetes

from medrobust import components as c
from medrobust.data.sources import SOURCES
from medrobust.params import params_from_text

PIPELINE_NAME = "medrobust"
GPU_NODE_SELECTOR = ("medrobust.io/node-pool", "gpu")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
MLFLOW_SECRET = "medrobust-mlflow"
MLFLOW_ENV = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
    "s3_endpoint_url": "MLFLOW_S3_ENDPOINT_URL",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
}
DATA_SECRET = "medrobust-data"  # the ingest source's credentials (PACS, S3) and the pseudonymisation key
DATA_ENV = {
    "pacs_user": "MEDROBUST_PACS_USER",
    "pacs_password": "MEDROBUST_PACS_PASSWORD",
    "pacs_token": "MEDROBUST_PACS_TOKEN",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "pseudonym_key": "MEDROBUST_PSEUDONYM_KEY",
}


def _gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_limit("8").set_memory_limit("32G")
    kubernetes.add_node_selector(task, label_key=GPU_NODE_SELECTOR[0], label_value=GPU_NODE_SELECTOR[1])
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def _mlflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_ENV, optional=True)
    return task


def _data_secrets(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=DATA_SECRET, secret_key_to_env=DATA_ENV, optional=True)
    return task


def _cached(task: dsl.PipelineTask, retries: int = 2) -> dsl.PipelineTask:
    task.set_caching_options(True)
    task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def build_pipeline(default_params_yaml: str):
    """The pipeline function, with ``params_yaml`` defaulting to the given text (validated first).

    Args:
        default_params_yaml: params.yaml as one line of JSON (:func:`medrobust.params.params_as_text`).

    Returns:
        The ``@dsl.pipeline`` function ``medrobust_pipeline(params_yaml=default_params_yaml)``, ready for
        ``kfp.compiler.Compiler().compile`` or kfp.local. A ``synthesize`` task is in it only when
        ``data.source``'s registry entry is ``synthesized``.

    Raises:
        ConfigError: the params are invalid.
    """
    synthesized = bool(SOURCES.cfg(params_from_text(default_params_yaml).data.source).get("synthesized"))

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, attack, gate and register a robust medical-image classifier.")
    def medrobust_pipeline(params_yaml: str = default_params_yaml):
        if synthesized:
            raw = _cached(c.synthesize(params_yaml=params_yaml).set_display_name("synthesize"))
            ing = c.ingest(params_yaml=params_yaml, raw_data=raw.outputs["raw_data"])
        else:
            ing = c.ingest(params_yaml=params_yaml)
        ing = _data_secrets(_cached(ing))
        adv = _gpu(_cached(c.advgen(params_yaml=params_yaml, dataset=ing.outputs["dataset"])))
        trn = _mlflow(_gpu(_cached(c.train(params_yaml=params_yaml, dataset=ing.outputs["dataset"]))))
        ev = _mlflow(_gpu(_cached(c.evaluate(
            params_yaml=params_yaml, dataset=ing.outputs["dataset"],
            adversarial=adv.outputs["adversarial"], model=trn.outputs["model"],
        ))))
        ev.set_caching_options(False)  # logs to the (uncached) MLflow run of this execution
        with dsl.If(ev.outputs["Output"] == True, name="gates-passed"):  # noqa: E712 - a KFP condition
            reg = c.register(params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                             evaluation=ev.outputs["evaluation"])
            _mlflow(reg.set_caching_options(False).set_retry(num_retries=2, backoff_duration="30s"))
        with dsl.Else(name="gates-failed"):
            rej = c.register(params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                             evaluation=ev.outputs["evaluation"])
            _mlflow(rej.set_display_name("register-rejected").set_caching_options(False))

    return medrobust_pipeline


__all__ = ["DATA_SECRET", "MLFLOW_SECRET", "PIPELINE_NAME", "build_pipeline"]
