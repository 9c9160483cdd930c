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
    """The source cannot be read at all; the message says what, where, and how to fix it.

    For a problem that concerns every item (a missing folder, refused credentials, an unreachable server,
    a malformed labels table): ingest stops and writes nothing, instead of quarantining item after item.
    """


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
    "decode_failed": "decoding raised an error (a malformed attribute: a DS that is not a number, a short LUT ...)",
    "bad_lookup_table": "a palette or VOI lookup table is missing or shorter than its descriptor declares",
    "out_of_memory": "decoding needed more memory than data.worker_memory_mb allows",
    "worker_crashed": "the decoder crashed (its process died) on this item",
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
    """One item must go to quarantine; ``reason`` is a key of :data:`REASONS`.

    Args:
        reason: why the item is quarantined, a key of :data:`REASONS` (the ``reason`` column of
            ``quarantine.csv``).
        message: what is wrong and how to fix it (the ``message`` column); it must not hold an identifier.

    Attributes:
        reason: as given.
        message: as given.
        uid: the item's SOPInstanceUID when it was read before the failure, else None; set by whoever
            knows it, so the item's labels-table row is not also reported as ``image_missing``.

    Raises:
        ValueError: ``reason`` is not a key of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; add it to REASONS")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.uid: str | None = None  # the item's SOPInstanceUID when it was read before the failure


@dataclass
class Item:
    """One candidate image, before decoding (see the module docstring).

    Attributes:
        ref: where the item is, for ``quarantine.csv``; identifies no one (a relative path, an object
            key, ``train[17]``).
        kind: ``dicom`` or ``image`` (``read`` gives the file's bytes) or ``array`` (``array`` holds pixels).
        read: returns the item's bytes; called once, by ingest, when the item is processed. It may raise
            :class:`Rejected` (e.g. a failed download).
        array: the pixels of an ``array`` item: (H, W) or (H, W, 3), uint8 or float in [0, 1].
        label: the label, when the source itself knows it (else :meth:`Source.label` looks it up).
        group: the patient / lesion id, when it is not in a DICOM header.
        uid: a unique instance id, when it is not in a DICOM header.
        split: the source's official split (``train``/``val``/``test``), if any.
        extra: non-identifying facts written to the manifest as extra columns.
        resize: False when ``array`` is stored as it is (feature vectors, e.g. ``two_moons``).
    """

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
    """A row of quarantine.csv for something that is not a single item (e.g. a label row without image).

    Attributes:
        ref: what the row is about, identifying no one (e.g. ``labels:<file>`` or a pseudonymised UID).
        reason: a key of :data:`REASONS`.
        message: what is wrong and how to fix it.
    """

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
        """The source's candidate images, in a fixed order; each is read only when ingest reads it.

        Yields:
            One :class:`Item` per candidate image.

        Raises:
            NotImplementedError: the subclass does not implement it.
        """
        raise NotImplementedError

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The label of a decoded item. ``header`` holds identifying DICOM keys (PatientID,
        SOPInstanceUID, ImageLaterality...) for lookup only. Raises :class:`Rejected`.

        The base implementation returns ``item.label``, for sources that know the label themselves.

        Args:
            item: the decoded item.
            header: the item's :data:`~medrobust.data.dicom.LOOKUP_KEYS` present in its DICOM header
                (empty for plain images and arrays); never persist it.

        Returns:
            The label, checked by ingest against ``data.classes``.

        Raises:
            Rejected: ``missing_label`` (here: ``item.label`` is None); subclasses also raise
                ``conflicting_labels`` and the like.
        """
        if item.label is None:
            raise Rejected("missing_label", "the source gives no label for this item")
        return item.label

    def saw(self, item: Item, uid: str | None) -> None:
        """An item was quarantined before its label was looked up: its label row is not "missing".

        The base implementation does nothing (the source has no labels table).

        Args:
            item: the quarantined item.
            uid: its SOPInstanceUID when it was read before the failure (:attr:`Rejected.uid`), else None.
        """

    def leftovers(self) -> list[QuarantineRow]:
        """After :meth:`items` is exhausted: things that were expected but not seen
        (labels-table rows without an image). They go to quarantine.csv too.

        Returns:
            One row per thing expected but not seen; the base implementation returns ``[]``.
        """
        return []

    def close(self) -> None:
        """Release connections / temporary folders; the base implementation does nothing."""


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_table(raw: bytes, where: str, encoding: str = "auto") -> str:
    """A labels table's bytes as text: ``data.labels_encoding``, or (``auto``) its byte-order mark, else UTF-8.

    Raises:
        SourceError: the bytes are not text in that encoding; the message names the line and the byte, and
            says to set ``data.labels_encoding`` (a spreadsheet's "CSV" export is often ``cp1252``).
    """
    if encoding == "auto":
        encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{where}: line {line} is not {encoding} text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); set data.labels_encoding to the file's encoding (e.g. latin-1 or cp1252), "
                          "or save it as UTF-8") from None


class LabelTable:
    """A labels CSV keyed by ``SOPInstanceUID`` (DICOM) or ``file`` (a path/key relative to the root).

    Optional columns: ``patient_id`` (the group for non-DICOM images). Conflicting rows for one key
    are remembered and reported as ``conflicting_labels``; rows never looked up are
    :meth:`unused`.

    Args:
        rows: the CSV rows (column -> value); a row may give both key columns, and is then found by either.
        where: the table's location (a path or ``s3://`` URL), for messages.

    Attributes:
        labels: key -> label (the last row's label when a key repeats).
        groups: key -> ``patient_id``, for rows that give one.
        problems: key -> message, for keys given two different labels.
        used: the keys looked up (or marked seen) so far.
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
        """Parse a labels CSV held in memory.

        Args:
            text: the CSV's text (a header row, then one row per image).
            where: the table's location, for messages.

        Returns:
            The table.

        Raises:
            SourceError: no ``label`` column, or neither ``SOPInstanceUID`` nor ``file``; a column named twice
                (which would make one of them win silently); the header repeated below the first line (two
                files pasted together). Each message names the table and the line.
        """
        reader = csv.DictReader(text.lstrip("\ufeff").splitlines())
        cols = reader.fieldnames or []
        stripped = [c.strip() for c in cols]
        if dupes := sorted({c for c in stripped if stripped.count(c) > 1}):
            raise SourceError(f"{where}: line 1 names the column(s) {', '.join(map(repr, dupes))} more than once; "
                              "keep one (the labels would otherwise come from whichever is last)")
        if "label" not in cols or not any(c in cols for c in cls.KEY_COLUMNS):
            raise SourceError(
                f"{where}: needs a 'label' column and a key column ('SOPInstanceUID' for DICOM, "
                f"'file' for plain images), found {cols}; write one row per image"
            )
        rows = []
        for row in reader:
            if [(row.get(c) or "").strip() for c in cols] == stripped:
                raise SourceError(f"{where}: line {reader.line_num} repeats the header; remove it (were two files "
                                  "joined?)")
            rows.append(row)
        return cls(rows, where)

    @classmethod
    def from_path(cls, path: str | Path, setting: str = "data.labels_csv", encoding: str = "auto") -> LabelTable:
        """Read a labels CSV file (:func:`decode_table`: ``encoding``, or its byte-order mark, else UTF-8).

        Args:
            path: the CSV file.
            setting: the params.yaml setting that names ``path``, for the message when it is missing.
            encoding: ``data.labels_encoding``.

        Returns:
            The table.

        Raises:
            SourceError: the file does not exist, is not text in that encoding, or fails :meth:`from_text`.
        """
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"labels CSV not found: {path} (set {setting} in params.yaml)")
        return cls.from_text(decode_table(path.read_bytes(), str(path), encoding), str(path))

    def lookup(self, key: str) -> str:
        """The label for ``key``; raises :class:`Rejected` (missing / conflicting).

        The key is marked used, so its row is not reported by :meth:`unused` even when it is rejected.

        Args:
            key: a SOPInstanceUID (DICOM) or a path/key relative to the source root (plain images).

        Returns:
            The row's label.

        Raises:
            Rejected: ``conflicting_labels`` (two rows give different labels), ``missing_label`` (no row,
                or an empty label).
        """
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
        file keys are paths the user chose and are kept so the row can be found.

        Args:
            pseudonymise: maps a UID key to its pseudonym (e.g. ``lambda k: pseudonym(key, "image", k)``).

        Returns:
            One ``image_missing`` row per key never looked up, sorted by key.
        """
        return [
            QuarantineRow(
                ref=f"labels:{pseudonymise(k) if _looks_like_uid(k) else k}", reason="image_missing",
                message=f"a row of {Path(self.where).name} names an image that is not in the source",
            )
            for k in sorted(set(self.labels) - self.used)
        ]


def _looks_like_uid(key: str) -> bool:
    return bool(key) and all(c.isdigit() or c == "." for c in key)
