"""Component: train — shell around :func:`medrobust.stages.train.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(params_yaml: str, dataset: Input[Dataset], model: Output[Model]) -> str:
    """Train the configured method; returns the MLflow run id.

    Runs medrobust.stages.train.run: train.method on the train split, a checkpoint every epoch, the run
    and the model logged to MLflow.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        dataset: the ingest task's dataset.

    Returns:
        model: model.pt (state dict) and model.json (its spec), run.json (MLflow run id, model URI,
            SHA-256), history.json, training.png and checkpoints/; metadata mlflow_run_id and
            mlflow_model_uri.
        Output: the MLflow run id.

    Raises:
        ConfigError: params_yaml is invalid.
        ValueError: the training method refuses the model or the data.
    """
    from medrobust.params import params_from_text
    from medrobust.stages import train as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, model.path)
    model.metadata["mlflow_run_id"] = result.run_id
    model.metadata["mlflow_model_uri"] = result.model_uri
    return result.run_id
