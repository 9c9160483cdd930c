"""Component: ingest — shell around :func:`medrobust.stages.ingest.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str, raw_data: Input[Dataset], dataset: Output[Dataset], validation_report: Output[Markdown]
) -> int:
    """Ingest ``data.source``: for folder sources ``raw_data`` (``dicom/`` + ``labels.csv``), else the
    source named in params.yaml (a PACS, a bucket, MedMNIST...). Returns the number of images kept."""
    import shutil
    from pathlib import Path

    from medrobust.config import params_from_text
    from medrobust.stages import ingest as stage
    from medrobust.utils import setup_logging

    setup_logging()
    params = params_from_text(params_yaml)
    raw = Path(raw_data.path)
    if params.data.source in ("synthetic", "dicom_folder"):  # the raw_data artifact is the folder
        result = stage.run(params, dataset.path, raw / "dicom", raw / "labels.csv")
    else:  # pacs, s3, medmnist...: the source's own settings (credentials from the pod's env/secrets)
        result = stage.run(params, dataset.path)
    shutil.copyfile(Path(dataset.path) / "validation.md", validation_report.path)
    return result.n_images
