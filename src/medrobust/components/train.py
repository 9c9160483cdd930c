"""Component: train — shell around :func:`medrobust.stages.train.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(params_yaml: str, dataset: Input[Dataset], model: Output[Model]) -> str:
    """Train the configured method; returns the MLflow run id."""
    from medrobust.params import params_from_text
    from medrobust.stages import train as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, model.path)
    model.metadata["mlflow_run_id"] = result.run_id
    model.metadata["mlflow_model_uri"] = result.model_uri
    return result.run_id
