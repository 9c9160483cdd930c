"""The Kubeflow pipeline: synthesize -> ingest -> advgen -> train -> attack (fanned out) -> evaluate -> register.

* The attack suite fans out: a ``dsl.ParallelFor`` over ``evaluate.attacks`` runs one ``attack`` task
  per entry (every ε of it; ``kubeflow.resources.attack``, at most ``kubeflow.attack_parallelism`` at
  once), so the evaluation waits for the slowest attack, not their sum. ``evaluate`` merges their
  runs (``dsl.Collected``) into exactly the ``metrics.json`` a single-process evaluation writes, and
  runs what is not fanned out (the masking checks, shifts, transfer sets). The loop's items are the
  attacks of the params compiled in; a run that overrides ``params_yaml`` with other attacks is still
  evaluated in full (evaluate attacks what has no matching run: :mod:`medrobust.evaluation.fanout`).
* ``dsl.If`` gates registration on the evaluation outcome: when the absolute gates pass, the
  ``register`` task may promote the version to ``@champion`` (it still checks the champion
  comparison); otherwise ``register-rejected`` records the version with its rejection tags, so the
  registry always shows what was tried.
* Each step's CPU, memory and GPUs come from ``kubeflow.resources.<stage>`` (request = limit); a
  step with GPUs (advgen, train, each attack and evaluate by default: one each) gets the accelerator, the GPU
  node pool's node selector (plus the GPU model's label when ``gpu_type`` is set) and tolerations
  through kfp-kubernetes, all from ``kubeflow`` in params.yaml.
* Deterministic stages are cached and retried; register is never cached (it has side effects).
* A ``dsl.ExitHandler`` wraps the whole DAG: its ``pipeline-status`` task runs last, whatever
  happened, and records the final state (SUCCEEDED, FAILED, CANCELLED) as a JSON artifact and as an
  MLflow run tagged ``medrobust.pipeline_state`` (:mod:`medrobust.registry.run_status`).
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
from medrobust.components.status import pipeline_status
from medrobust.data.sources import SOURCES
from medrobust.params import KubeflowConfig, params_from_text

PIPELINE_NAME = "medrobust"
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


def _resources(task: dsl.PipelineTask, stage: str, kf: KubeflowConfig) -> dsl.PipelineTask:
    """``kubeflow.resources.<stage>``: CPU and memory (request = limit), and GPUs on the GPU node pool."""
    r = kf.resources[stage]
    task.set_cpu_request(r.cpu).set_cpu_limit(r.cpu).set_memory_request(r.memory).set_memory_limit(r.memory)
    if r.gpus:
        task.set_accelerator_type(r.accelerator).set_accelerator_limit(r.gpus)
        for key, value in kf.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if r.gpu_type:
            kubernetes.add_node_selector(task, label_key=kf.gpu_type_label, label_value=r.gpu_type)
        for t in kf.gpu_tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect)
    return task


def _mlflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_ENV, optional=True)
    return task


def _data_secrets(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=DATA_SECRET, secret_key_to_env=DATA_ENV, optional=True)
    return task


def _cached(task: dsl.PipelineTask, retries: int) -> dsl.PipelineTask:
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
    params = params_from_text(default_params_yaml)
    synthesized = bool(SOURCES.cfg(params.data.source).get("synthesized"))
    kf = params.kubeflow

    def step(task: dsl.PipelineTask, stage: str, cached: bool = True) -> dsl.PipelineTask:
        task = _resources(task, stage, kf)
        return _cached(task, kf.retries) if cached else task

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, attack, gate and register a robust medical-image classifier.")
    def medrobust_pipeline(params_yaml: str = default_params_yaml):
        # the exit handler: runs after everything else, also when a step failed, and records how the run ended
        done = pipeline_status(params_yaml=params_yaml).set_display_name("pipeline-status")
        _mlflow(_resources(done, "register", kf).set_caching_options(False))
        with dsl.ExitHandler(done, name="medrobust-run"):
            if synthesized:
                raw = step(c.synthesize(params_yaml=params_yaml).set_display_name("synthesize"), "synthesize")
                ing = c.ingest(params_yaml=params_yaml, raw_data=raw.outputs["raw_data"])
            else:
                ing = c.ingest(params_yaml=params_yaml)
            ing = _data_secrets(step(ing, "ingest"))
            adv = step(c.advgen(params_yaml=params_yaml, dataset=ing.outputs["dataset"]), "advgen")
            trn = _mlflow(step(c.train(params_yaml=params_yaml, dataset=ing.outputs["dataset"]), "train"))
            with dsl.ParallelFor(items=[a.key for a in params.evaluate.attacks], name="attack-suite",
                                 parallelism=kf.attack_parallelism or None) as attack_key:
                att = step(c.attack(params_yaml=params_yaml, dataset=ing.outputs["dataset"],
                                    model=trn.outputs["model"], attack_key=attack_key), "attack")
            ev = _mlflow(step(c.evaluate(
                params_yaml=params_yaml, dataset=ing.outputs["dataset"], adversarial=adv.outputs["adversarial"],
                model=trn.outputs["model"], attacks=dsl.Collected(att.outputs["attacked"]),
            ), "evaluate"))
            ev.set_caching_options(False)  # logs to the (uncached) MLflow run of this execution
            with dsl.If(ev.outputs["Output"] == True, name="gates-passed"):  # noqa: E712 - a KFP condition
                reg = c.register(params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                                 evaluation=ev.outputs["evaluation"])
                _mlflow(_resources(reg, "register", kf).set_caching_options(False)
                        .set_retry(num_retries=kf.retries, backoff_duration="30s"))
            with dsl.Else(name="gates-failed"):
                rej = c.register(params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                                 evaluation=ev.outputs["evaluation"])
                _mlflow(_resources(rej, "register", kf).set_display_name("register-rejected").set_caching_options(False))

    return medrobust_pipeline


__all__ = ["DATA_SECRET", "MLFLOW_SECRET", "PIPELINE_NAME", "build_pipeline"]
