"""What every ingest source delivers: :class:`Item` s, and a way to label them.

A source only *finds* images and knows where their labels come from; decoding, de-identification,
quarantine, splitting, validation and writing are the ingest stage's, shared by all sources. So
a PACS, a bucket and a folder holding the same DICOM files give the same dataset.

An :class:`Item` is one candidate image before decoding:

* ``kind="dicom"``: ``read()`` returns the bytes of a DICOM file (Part 10, preamble optional);
* ``kind="image"``: ``read()`` returns the bytes of a PNG/JPEG/TIFF/BMP file;
* ``kind="array"``: ``array`` holds the pixels (H, W) or (H, W, 3), uint8 or float in [0, 1].

``ref`` locates the item for ``quarantine.csv`` without identifying anyone (a path relative to the
source root, an object key, ``train[17]``; never a PatientID or a name taken from a header).

Errors: a problem with the source as a whole (a missing folder, refused credentials, an
unreachable server) raises :class:`SourceError` before anything is written; a problem with one
item raises :class:`Rejected` and sends that item to quarantine.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medrobust.utils.registry import Registry

log = logging.getLogger(__name__)


#: ``data.source`` name -> :class:`Source` subclass. Registered with a default config that says what the
#: source delivers: ``dicom`` — ``"all"`` (every item is a DICOM object), ``"some"`` (DICOM and plain
#: images) or ``"none"``; ``vectors`` — feature vectors rather than images; ``sided`` — every image has
#: a laterality (one breast). The ingest checks (:mod:`medrobust.data.validation`) read these.
SOURCES: Registry[type[Source]] = Registry("data source")


class SourceError(RuntimeError):
    """The source cannot be read at all; the message says what, where, and how to fix it."""


#: Why an item can be quarantined. ``quarantine.csv``'s ``reason`` column holds these names.
REASONS: dict[str, str] = {
    # reading the file
    "empty_file": "the file has zero bytes",
    "not_dicom": "no DICOM preamble/header (is this really a DICOM file?)",
    "truncated": "the file ends before its declared content",
    "unreadable": "the file could not be parsed (DICOM or image)",
    "too_large": "the object or frame is larger than the configured limit",
    # what the DICOM object holds
    "no_pixel_data": "a DICOM object without an image (e.g. a structured report)",
    "unsupported_transfer_syntax": "no installed decoder handles this transfer syntax",
    "multiframe": "several frames (a 3-D volume or cine) and data.dicom.multiframe is reject",
    "empty_image": "Rows or Columns is zero",
    "unsupported_dimensions": "not a 2-D image of at least 8x8 pixels",
    "unsupported_photometric": "a photometric interpretation ingest cannot map to grey levels",
    "corrupt_pixel_data": "the pixel data cannot be decoded to the declared shape",
    "invalid_values": "NaN/inf or a constant image after rescale and windowing",
    "missing_patient_id": "no PatientID: a patient-level split is impossible",
    "missing_instance_uid": "no SOPInstanceUID: the image cannot be matched to a label",
    # labels and identity
    "missing_label": "no label for this image (no row in the labels table)",
    "label_not_allowed": "the label is not one of data.classes",
    "conflicting_labels": "the labels table gives this image two different labels",
    "duplicate_sop_uid": "another image already has this SOPInstanceUID",
    "duplicate_image": "another item has byte-identical content",
    "image_missing": "a labels-table row whose image was not found in the source",
    "not_retrieved": "the source listed this image but did not deliver it (e.g. a failed PACS retrieve)",
    # array formats
    "bad_npz": "an .npz file without the expected arrays (keys, shapes, dtypes)",
    "bad_label_value": "a label value outside the dataset's label range",
}


class Rejected(Exception):
    """One item must go to quarantine; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; add it to REASONS")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.uid: str | None = None  # the item's SOPInstanceUID when it was read before the failure


@dataclass
class Item:
    """One candidate image, before decoding (see the module docstring)."""

    ref: str
    kind: Literal["dicom", "image", "array"]
    read: Callable[[], bytes] | None = None
    array: np.ndarray | None = None
    label: str | None = None          # the label, when the source itself knows it
    group: str | None = None          # patient / lesion id, when not in a DICOM header
    uid: str | None = None            # unique instance id, when not in a DICOM header
    split: str | None = None          # the source's official split (train/val/test), if any
    extra: dict[str, Any] = field(default_factory=dict)  # non-identifying facts for the manifest
    resize: bool = True               # False: ``array`` is stored as it is (feature vectors, e.g. two_moons)


@dataclass
class QuarantineRow:
    """A row of quarantine.csv for something that is not a single item (e.g. a label row without image)."""

    ref: str
    reason: str
    message: str


class Source:
    """Base class: subclasses implement :meth:`items` and, if labels live outside the item, :meth:`label`.

    Attributes:
        name: the registry name (``data.source``).
        classes: the class names the source defines (MedMNIST, HAM10000...), or None when the
            labels are free text checked against ``data.classes``.
    """

    name: str = ""
    classes: tuple[str, ...] | None = None

    def items(self) -> Iterator[Item]:
        raise NotImplementedError

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The label of a decoded item. ``header`` holds identifying DICOM keys (PatientID,
        SOPInstanceUID, ImageLaterality...) for lookup only. Raises :class:`Rejected`."""
        if item.label is None:
            raise Rejected("missing_label", "the source gives no label for this item")
        return item.label

    def saw(self, item: Item, uid: str | None) -> None:
        """An item was quarantined before its label was looked up: its label row is not "missing"."""

    def leftovers(self) -> list[QuarantineRow]:
        """After :meth:`items` is exhausted: things that were expected but not seen
        (labels-table rows without an image). They go to quarantine.csv too."""
        return []

    def close(self) -> None:
        """Release connections / temporary folders."""


class LabelTable:
    """A labels CSV keyed by ``SOPInstanceUID`` (DICOM) or ``file`` (a path/key relative to the root).

    Optional columns: ``patient_id`` (the group for non-DICOM images). Conflicting rows for one key
    are remembered and reported as ``conflicting_labels``; rows never looked up are
    :meth:`unused`.
    """

    KEY_COLUMNS = ("SOPInstanceUID", "file")

    def __init__(self, rows: list[dict[str, str]], where: str) -> None:
        self.where = where
        self.labels: dict[str, str] = {}
        self.groups: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self.used: set[str] = set()
        for row in rows:
            for col in self.KEY_COLUMNS:
                key = (row.get(col) or "").strip()
                if not key:
                    continue
                label = (row.get("label") or "").strip()
                if key in self.labels and self.labels[key] != label:
                    self.problems[key] = f"conflicting labels {self.labels[key]!r} and {label!r} in {where}"
                self.labels[key] = label
                if (row.get("patient_id") or "").strip():
                    self.groups[key] = row["patient_id"].strip()

    @classmethod
    def from_text(cls, text: str, where: str) -> LabelTable:
        reader = csv.DictReader(text.splitlines())
        cols = reader.fieldnames or []
        if "label" not in cols or not any(c in cols for c in cls.KEY_COLUMNS):
            raise SourceError(
                f"{where}: needs a 'label' column and a key column ('SOPInstanceUID' for DICOM, "
                f"'file' for plain images), found {cols}; write one row per image"
            )
        return cls(list(reader), where)

    @classmethod
    def from_path(cls, path: str | Path, setting: str = "data.labels_csv") -> LabelTable:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"labels CSV not found: {path} (set {setting} in params.yaml)")
        return cls.from_text(path.read_text(encoding="utf-8-sig"), str(path))

    def lookup(self, key: str) -> str:
        """The label for ``key``; raises :class:`Rejected` (missing / conflicting)."""
        self.used.add(key)
        if key in self.problems:
            raise Rejected("conflicting_labels", self.problems[key])
        if key not in self.labels:
            raise Rejected("missing_label", f"add a row for this image to {Path(self.where).name}")
        if not self.labels[key]:
            raise Rejected("missing_label", f"the row for this image in {Path(self.where).name} has an empty label")
        return self.labels[key]

    def unused(self, pseudonymise: Callable[[str], str]) -> list[QuarantineRow]:
        """Rows whose image never appeared. UID keys are pseudonymised (UIDs are identifiers);
        file keys are paths the user chose and are kept so the row can be found."""
        return [
            QuarantineRow(
                ref=f"labels:{pseudonymise(k) if _looks_like_uid(k) else k}", reason="image_missing",
                message=f"a row of {Path(self.where).name} names an image that is not in the source",
            )
            for k in sorted(set(self.labels) - self.used)
        ]


def _looks_like_uid(key: str) -> bool:
    return bool(key) and all(c.isdigit() or c == "." for c in key)
