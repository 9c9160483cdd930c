"""Component: synthesize — shell around :func:`medrobust.stages.synthesize.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def synthesize(params_yaml: str, raw_data: Output[Dataset]) -> int:
    """Write the synthetic DICOM tree (``dicom/`` + ``labels.csv``); returns the image count.

    Runs medrobust.stages.synthesize.run with the data.synthetic settings.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).

    Returns:
        raw_data: the tree: dicom/study_NNNN/series_01/img_NNNN.dcm and labels.csv (SOPInstanceUID, label).
        Output: the number of images written.

    Raises:
        ConfigError: params_yaml is invalid.
    """
    from medrobust.params import params_from_text
    from medrobust.stages import synthesize as stage
    from medrobust.utils import setup_logging

    setup_logging()
    return stage.run(params_from_text(params_yaml), raw_data.path)["images"]
