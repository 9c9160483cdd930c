"""Component: advgen — shell around :func:`medrobust.stages.advgen.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def advgen(params_yaml: str, dataset: Input[Dataset], adversarial: Output[Dataset]) -> str:
    """Write the adversarial transfer sets; returns the surrogate's SHA-256."""
    from medrobust.params import params_from_text
    from medrobust.stages import advgen as stage
    from medrobust.utils import setup_logging

    setup_logging()
    return stage.run(params_from_text(params_yaml), dataset.path, adversarial.path).surrogate_sha256
