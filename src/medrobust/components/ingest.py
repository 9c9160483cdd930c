"""Component: ingest — shell around :func:`medrobust.stages.ingest.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str, raw_data: Input[Dataset], dataset: Output[Dataset], validation_report: Output[Markdown]
) -> int:
    """Ingest ``raw_data`` (``dicom/`` + ``labels.csv``); returns the number of images kept."""
    import shutil
    from pathlib import Path

    from medrobust.config import params_from_text
    from medrobust.stages import ingest as stage
    from medrobust.utils import setup_logging

    setup_logging()
    raw = Path(raw_data.path)
    result = stage.run(params_from_text(params_yaml), dataset.path, raw / "dicom", raw / "labels.csv")
    shutil.copyfile(Path(dataset.path) / "validation.md", validation_report.path)
    return result.n_images
