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
    from pathlib import Path

    from medrobust.config import params_from_text
    from medrobust.registry.gates import gate_metrics
    from medrobust.stages import evaluate as stage
    from medrobust.utils import setup_logging

    setup_logging()
    params = params_from_text(params_yaml)
    result = stage.run(params, dataset.path, model.path, adversarial.path, evaluation.path)
    clean, robust = gate_metrics(result.metrics, params.register.gates)
    metrics.log_metric("clean_accuracy", clean)
    metrics.log_metric("clean_auc", result.metrics["clean"]["auc"])
    metrics.log_metric("gate_robust_accuracy", robust)
    shutil.copyfile(Path(evaluation.path) / "report.md", report.path)
    return result.passes_gates
