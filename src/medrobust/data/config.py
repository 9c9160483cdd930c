"""``data:`` and ``validation:`` of params.yaml: where images come from and how they become shards.

Each part is defined beside the code it configures: the sources' settings beside the sources
(``data.pacs`` in :mod:`medrobust.data.sources.pacs` ...), ``data.dicom`` beside the decoder,
``data.split`` beside the patient split, ``data.synthetic`` beside the generator and ``validation``
beside the Great Expectations suites. The allowed ``data.source`` names are the
:data:`~medrobust.data.sources.SOURCES` registry's.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from medrobust.config import InRegistry, Seq, StrictModel
from medrobust.data.dicom import MAX_PIXELS, DicomConfig
from medrobust.data.sources import SOURCES
from medrobust.data.sources.cmmd import CmmdConfig
from medrobust.data.sources.ham10000 import HamConfig
from medrobust.data.sources.image_folder import ImageFolderConfig
from medrobust.data.sources.medmnist import MedmnistConfig
from medrobust.data.sources.pacs import PacsConfig
from medrobust.data.sources.s3 import S3Config
from medrobust.data.sources.two_moons import TwoMoonsConfig
from medrobust.data.split import SplitConfig
from medrobust.data.synthetic import SyntheticConfig
from medrobust.data.validation import ValidationConfig


class DataConfig(StrictModel):
    """``data``: the source, the classes, the image size, the split, and every source's settings."""

    source: Annotated[str, InRegistry(SOURCES)] = "synthetic"
    dicom_dir: str = "data/raw/synthetic/dicom"
    labels_csv: str = "data/raw/synthetic/labels.csv"
    follow_symlinks: bool = False  # read a symlinked file under the source folder (never one pointing out of it)
    labels_encoding: str = "auto"  # the labels table's text encoding; auto: its byte-order mark (UTF-8/16/32), else UTF-8
    classes: Seq[str] = ("normal", "lesion")
    image_size: int = Field(64, ge=8, le=1024)
    max_pixels: int = Field(MAX_PIXELS, ge=64, le=2**31)  # larger images (DICOM frames x rows x columns, PNG...) are quarantined
    shard_size: int = Field(256, ge=1, le=1_000_000)
    split: SplitConfig = SplitConfig()
    worker_memory_mb: int = Field(4096, ge=0, le=2**20)  # each decode process's memory bound (RLIMIT_AS); 0: none
    workers: int = Field(0, ge=0, le=64)          # decode processes for sources of >= 256 items; 0: one per core (<= 4); 1: none
    use_source_splits: bool = True                # keep a source's official train/val/test (MedMNIST, two_moons)
    synthetic: SyntheticConfig = SyntheticConfig()
    dicom: DicomConfig = DicomConfig()
    pacs: PacsConfig = PacsConfig()
    s3: S3Config = S3Config()
    medmnist: MedmnistConfig = MedmnistConfig()
    ham10000: HamConfig = HamConfig()
    cmmd: CmmdConfig = CmmdConfig()
    image_folder: ImageFolderConfig = ImageFolderConfig()
    two_moons: TwoMoonsConfig = TwoMoonsConfig()

    @field_validator("labels_encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        import codecs

        if name != "auto":
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(f"unknown text encoding {name!r}; use auto, utf-8, latin-1, cp1252, utf-16 ...") from None
        return name

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"need >= 2 distinct class names, got {list(classes)!r}")
        return classes


__all__ = ["DataConfig", "ValidationConfig"]
