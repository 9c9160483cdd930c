"""Component: ingest — shell around :func:`medrobust.stages.ingest.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str, dataset: Output[Dataset], validation_report: Output[Markdown], raw_data: Input[Dataset] = None,
) -> int:
    """Ingest ``data.source`` (a folder source reads ``raw_data``, the synthesize task's output, when
    given; a PACS, a bucket, MedMNIST... their own settings). Returns the number of images kept.

    Runs medrobust.stages.ingest.run: de-identified, validated array shards split by patient.

    Args:
        params_yaml: params.yaml as one line of JSON (medrobust.params.params_as_text).
        raw_data: the synthesize task's output (dicom/ and labels.csv), read by folder sources; optional,
            absent when the source is read directly.

    Returns:
        dataset: manifest.csv (one row per image, pseudonymous ids), shards/<split>-NNNN.npy (float32
            images in [0, 1]), quarantine.csv, validation.json, validation.md, data_docs/, ingest.json and
            samples.png.
        validation_report: validation.md, the readable Great Expectations summary.
        Output: the number of images kept.

    Raises:
        ConfigError: params_yaml is invalid.
        IngestError: the source cannot be read.
        IngestValidationError: validation failed or too many items were quarantined.
    """
    import shutil

    from medrobust.params import params_from_text
    from medrobust.stages import ingest as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, raw_dir=raw_data.path if raw_data else None)
    shutil.copyfile(result.validation_report, validation_report.path)
    return result.n_images
