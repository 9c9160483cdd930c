"""Component: advgen — shell around :func:`medrobust.stages.advgen.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def advgen(params_yaml: str, dataset: Input[Dataset], adversarial: Output[Dataset]) -> str:
    """Write the adversarial transfer sets; returns the surrogate's SHA-256.

    Runs medrobust.stages.advgen.run: a surrogate (trained, or loaded from advgen.surrogate.weights) is
    attacked with every attack and epsilon of advgen.attacks on the test split.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        dataset: the ingest task's dataset.

    Returns:
        adversarial: manifest.csv (one row per adversarial image, with its set, attack and epsilon),
            shards/*.npy (float32 images in [0, 1]), surrogate/model.pt and model.json, and advgen.json
            (the surrogate's accuracy on every set).
        Output: the SHA-256 hex digest of the surrogate's model.pt.

    Raises:
        ConfigError: params_yaml is invalid.
    """
    from medrobust.params import params_from_text
    from medrobust.stages import advgen as stage
    from medrobust.utils import setup_logging

    setup_logging()
    return stage.run(params_from_text(params_yaml), dataset.path, adversarial.path).surrogate_sha256
