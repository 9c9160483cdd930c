"""Component: evaluate — shell around :func:`medrobust.stages.evaluate.run`."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    params_yaml: str,
    dataset: Input[Dataset],
    adversarial: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """Evaluate; returns whether the absolute gates pass (the DAG branches on it)."""
    import shutil

    from medrobust.params import params_from_text
    from medrobust.stages import evaluate as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, model.path, adversarial.path, evaluation.path)
    metrics.log_metric("clean_accuracy", result.clean_accuracy)
    metrics.log_metric("clean_auc", result.clean_auc)
    metrics.log_metric("gate_robust_accuracy", result.gate_robust_accuracy)
    shutil.copyfile(result.report, report.path)
    return result.passes_gates
