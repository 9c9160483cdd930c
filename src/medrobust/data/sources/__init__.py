"""Ingest sources, chosen by ``data.source`` in params.yaml.

====================  ========================================================================
name                  what it reads
====================  ========================================================================
``synthetic``         the embedded default: the DICOM tree the ``synthesize`` stage writes
``dicom_folder``      a folder of DICOM (and PNG/JPEG) files plus a labels CSV
``pacs``              a PACS via DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET)
``s3``                DICOM/PNG objects under an S3 prefix (boto3; any S3-compatible endpoint)
``medmnist``          a MedMNIST ``.npz`` (official splits; ChestMNIST multi-label mapped)
``image_folder``      one sub-folder per class
``ham10000``          HAM10000 images + metadata CSV; splits grouped by lesion_id
``cmmd``              the CMMD TCIA DICOM tree + clinical table
``two_moons``         sklearn make_moons points (the ARFL toy problem)
====================  ========================================================================

Each module is imported only when its source is used, so a folder ingest never imports boto3.
"""

from __future__ import annotations

import importlib
from typing import Any

from medrobust.data.sources.base import REASONS, Item, LabelTable, QuarantineRow, Rejected, Source, SourceError

SOURCES: dict[str, str] = {
    "synthetic": "medrobust.data.sources.folder:DicomFolderSource",
    "dicom_folder": "medrobust.data.sources.folder:DicomFolderSource",
    "pacs": "medrobust.data.sources.pacs:PacsSource",
    "s3": "medrobust.data.sources.s3:S3Source",
    "medmnist": "medrobust.data.sources.medmnist:MedmnistSource",
    "image_folder": "medrobust.data.sources.image_folder:ImageFolderSource",
    "ham10000": "medrobust.data.sources.ham10000:Ham10000Source",
    "cmmd": "medrobust.data.sources.cmmd:CmmdSource",
    "two_moons": "medrobust.data.sources.two_moons:TwoMoonsSource",
}


def source_class(name: str) -> type[Source]:
    if name not in SOURCES:
        raise SourceError(f"unknown data.source {name!r}; allowed values: {', '.join(sorted(SOURCES))}")
    module, cls = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_source(params: Any, **overrides: Any) -> Source:
    """The configured source; ``overrides`` (e.g. ``dicom_dir=...``) replace params.yaml values."""
    return source_class(params.data.source)(params, **overrides)


__all__ = ["REASONS", "SOURCES", "Item", "LabelTable", "QuarantineRow", "Rejected", "Source",
           "SourceError", "open_source", "source_class"]
