"""Component: ingest — shell around :func:`medrobust.stages.ingest.run`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from medrobust.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str, dataset: Output[Dataset], validation_report: Output[Markdown], raw_data: Input[Dataset] = None,
) -> int:
    """Ingest ``data.source`` (a folder source reads ``raw_data``, the synthesize task's output, when
    given; a PACS, a bucket, MedMNIST... their own settings). Returns the number of images kept."""
    import shutil

    from medrobust.params import params_from_text
    from medrobust.stages import ingest as stage
    from medrobust.utils import setup_logging

    setup_logging()
    result = stage.run(params_from_text(params_yaml), dataset.path, raw_dir=raw_data.path if raw_data else None)
    shutil.copyfile(result.validation_report, validation_report.path)
    return result.n_images
