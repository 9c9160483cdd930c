"""Ingest sources, chosen by ``data.source`` in params.yaml (the :data:`SOURCES` registry).

====================  ========================================================================
name                  what it reads
====================  ========================================================================
``synthetic``         the embedded default: the DICOM tree the ``synthesize`` stage writes
``dicom_folder``      a folder of DICOM (and PNG/JPEG) files plus a labels CSV
``pacs``              a PACS via DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET)
``s3``                DICOM/PNG objects under an S3 prefix (boto3; any S3-compatible endpoint)
``medmnist``          a MedMNIST ``.npz`` (official splits; ChestMNIST multi-label mapped)
``image_folder``      one sub-folder per class (PNG/JPEG/TIFF/BMP)
``ham10000``          HAM10000 dermoscopy images + metadata; splits grouped by lesion_id
``cmmd``              the CMMD TCIA DICOM tree + clinical table
``two_moons``         sklearn make_moons points (the ARFL toy problem)
====================  ========================================================================

Each source's settings (``data.<name>``) are defined beside it. Heavy client libraries (boto3,
pynetdicom, dicomweb-client, scikit-learn) are imported only when their source opens, so a folder
ingest never loads boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medrobust.data.sources import (  # noqa: F401 - imported to register them
    cmmd, folder, ham10000, image_folder, medmnist, pacs, s3, two_moons)
from medrobust.data.sources.base import SOURCES, REASONS, Item, LabelTable, QuarantineRow, Rejected, Source, SourceError

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig


def open_source(data: DataConfig, **overrides: Any) -> Source:
    """Open the source ``data.source`` names.

    Args:
        data: the validated ``data`` section of params.yaml.
        **overrides: replace params.yaml values for this run (e.g. ``dicom_dir=...``, ``labels_csv=...``).

    Returns:
        The open source; call its ``close()`` when done.

    Raises:
        SourceError: the source cannot be opened (missing folder, refused credentials, ...).
    """
    try:
        cls = SOURCES[data.source]
    except KeyError as exc:
        raise SourceError(f"data.source: {exc.args[0]}") from None
    source = cls(data, **overrides)
    source.name = data.source
    return source


__all__ = ["REASONS", "SOURCES", "Item", "LabelTable", "QuarantineRow", "Rejected", "Source", "SourceError",
           "open_source"]
