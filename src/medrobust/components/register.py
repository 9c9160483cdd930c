"""Component: register — shell around :func:`medrobust.stages.register.run`."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(params_yaml: str, model: Input[Model], evaluation: Input[Artifact], decision: Output[Artifact]) -> bool:
    """Register the model version; returns whether it became ``@champion``."""
    from medrobust.params import params_from_text
    from medrobust.stages import register as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), model.path, evaluation.path, decision.path)
    decision.metadata["version"] = result.version
    decision.metadata["promoted"] = result.promoted
    return result.promoted
