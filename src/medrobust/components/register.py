"""Component: register — shell around :func:`medrobust.stages.register.run`."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(params_yaml: str, dataset: Input[Dataset], model: Input[Model], evaluation: Input[Artifact],
             decision: Output[Artifact], report: Output[Artifact]) -> bool:
    """Register the model version; returns whether it became ``@champion``.

    Runs medrobust.stages.register.run: a new version of register.model_name in the MLflow registry,
    promoted to the champion alias only if it passes every gate, including the comparison with the
    current champion; otherwise tagged as rejected.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        dataset: the ingest task's dataset (its test split feeds the serving check).
        model: the train task's model (its run.json names the MLflow run and the logged model).
        evaluation: the evaluate task's evaluation (its metrics.json).

    Returns:
        decision: the decision as JSON (version, promoted, validation status, failed and all gates,
            previous and current champion); metadata version and promoted.
        report: the evaluation's ``report.md`` ending with the registry decision.
        Output: whether the version became the champion.

    Raises:
        ConfigError: params_yaml is invalid.
    """
    from medrobust.params import params_from_text
    from medrobust.stages import register as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), model.path, evaluation.path, decision.path, dataset.path,
                       report_path=report.path)
    decision.metadata["version"] = result.version
    decision.metadata["promoted"] = result.promoted
    return result.promoted
