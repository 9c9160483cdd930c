"""One item through ingest: read, hash, decode, de-duplicate, label, de-identify — or quarantine.

The same steps for every source (:mod:`medrobust.data.sources`); :mod:`medrobust.data.pool` runs
them over a whole source with decode worker processes. Identifiers (PatientID, SOPInstanceUID) are
used here for grouping, de-duplication and label lookup and never leave memory: a record holds
keyed-hash pseudonyms and the technical facts that pass the PS3.15 Annex E filter.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.data.deid import deidentify_facts, pseudonym
from medrobust.data.dicom import MAX_PIXELS, array_to_image, decode_dicom, uid_before_pixels
from medrobust.data.images import decode_image
from medrobust.data.sources import Item, Rejected, Source

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

#: DICOM attributes kept in the manifest -> their column names
FACT_COLUMNS = {
    "Modality": "modality", "PhotometricInterpretation": "photometric", "BitsStored": "bits_stored",
    "Rows": "source_rows", "Columns": "source_columns", "NumberOfFrames": "frames",
    "SamplesPerPixel": "samples_per_pixel", "BodyPartExamined": "body_part", "ViewPosition": "view_position",
    "ImageLaterality": "laterality", "TransferSyntaxUID": "transfer_syntax",
}


@dataclass
class Decoded:
    """A decoded item with its group, unique id and label (identifiers: in memory only).

    Attributes:
        pixels: the image, float32 in [0, 1] ((size, size), or as stored for ``resize=False`` arrays).
        group: the source patient (or lesion) id the split groups by.
        uid: the unique instance id (SOPInstanceUID or the source's own id).
        label: the class name.
        facts: the :data:`~medrobust.data.dicom.KEPT_TAGS` present, not yet de-identified.
    """

    pixels: np.ndarray
    group: str
    uid: str
    label: str
    facts: dict[str, str]


def decode_pixels(kind: str, raw: bytes | None, array: np.ndarray | None, resize: bool, size: int,
                  dicom_cfg: Any, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """(pixels, lookup header, technical facts) of one item; pure, so it can run in a worker process.

    Args:
        kind: the item's kind (``dicom``, ``image`` or ``array``).
        raw: the item's bytes (``dicom`` and ``image`` items), else None.
        array: the item's pixels (``array`` items), else None.
        resize: for arrays: True to make a grey (size, size) image (:func:`~medrobust.data.dicom.array_to_image`),
            False to keep the array as it is, as float32 (feature vectors).
        size: output side length in pixels (``data.image_size``).
        dicom_cfg: ``data.dicom`` (:class:`~medrobust.data.dicom.DicomConfig`), for DICOM items.
        max_pixels: ``data.max_pixels``, for DICOM and image items: larger ones are refused from their header.

    Returns:
        The pixels (float32), the lookup header (:data:`~medrobust.data.dicom.LOOKUP_KEYS`, identifying: never
        persist it) and the raw technical facts; header and facts are empty unless ``kind`` is ``dicom``.

    Raises:
        Rejected: the item cannot be decoded (an array item without an array; NaN/inf in a kept array;
            any reason of :func:`~medrobust.data.dicom.decode_dicom`, :func:`~medrobust.data.images.decode_image`
            or :func:`~medrobust.data.dicom.array_to_image`).
    """
    try:
        return _decode(kind, raw, array, resize, size, dicom_cfg, max_pixels)
    except Rejected:
        raise
    except MemoryError:
        rej = Rejected("out_of_memory", "decoding this item ran out of memory (data.worker_memory_mb bounds each "
                                        "decode process); raise it if the image is real, or lower data.max_pixels")
        rej.uid = item_uid(kind, raw)
        raise rej from None
    except Exception as exc:  # noqa: BLE001 - whatever one item raises, it is that item's quarantine entry
        raise Rejected("decode_failed", f"{type(exc).__name__} while decoding: {' '.join(str(exc).split())[:200]}"
                       ) from None


def item_uid(kind: str, raw: bytes | None) -> str | None:
    """A DICOM item's SOPInstanceUID read from its header alone (so its label row is not also reported)."""
    return uid_before_pixels(raw) if kind == "dicom" and raw is not None else None


def _decode(kind: str, raw: bytes | None, array: np.ndarray | None, resize: bool, size: int,
            dicom_cfg: Any, max_pixels: int) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    if kind == "dicom":
        assert raw is not None
        img = decode_dicom(raw, size, dicom_cfg, max_pixels)
        return img.pixels, img.header, img.facts
    if kind == "image":
        assert raw is not None
        return decode_image(raw, size, max_pixels), {}, {}
    if array is None:
        raise Rejected("unreadable", "an array item without an array")
    if resize:
        return array_to_image(array, size), {}, {}
    pixels = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(pixels)):
        raise Rejected("invalid_values", "NaN or inf values")
    return pixels, {}, {}


def resolve_item(item: Item, source: Source, pixels: np.ndarray, header: dict[str, str],
                 facts: dict[str, str]) -> Decoded:
    """Group, unique id and label of a decoded item (main process: label tables live here).

    The group is the header's PatientID, else ``item.group``; the unique id the header's SOPInstanceUID,
    else ``item.uid``; the label comes from :meth:`Source.label <medrobust.data.sources.base.Source.label>`.

    Args:
        item: the item.
        source: the source that delivered it.
        pixels: the decoded pixels.
        header: the lookup header from :func:`decode_pixels`.
        facts: the technical facts from :func:`decode_pixels`.

    Returns:
        The decoded item with its group, unique id and label.

    Raises:
        Rejected: ``missing_patient_id``, ``missing_instance_uid``, or the source's label rejection;
            carrying the item's SOPInstanceUID, so its label row is not reported missing too.
    """
    try:
        group = header.get("PatientID") or item.group or ""
        if not group:
            raise Rejected("missing_patient_id", {
                "dicom": "PatientID is empty; add it or drop the file (a patient-level split needs it)",
                "image": "no patient_id for this image: add it to the labels CSV's patient_id column (or a "
                         "groups_csv row); a patient-level split needs it",
            }.get(item.kind, "the source gives no group for this item"))
        uid = header.get("SOPInstanceUID") or item.uid or ""
        if not uid:
            raise Rejected("missing_instance_uid", "the item has no unique id")
        label = source.label(item, header)
    except Rejected as rej:
        rej.uid = rej.uid or header.get("SOPInstanceUID")
        raise
    return Decoded(pixels=pixels, group=group, uid=uid, label=label, facts=facts)


@dataclass
class IngestState:
    """What the item loop accumulates: records and images kept, items quarantined, classes left out.

    Attributes:
        classes: ``data.classes``.
        key: the pseudonymisation key (:func:`medrobust.data.deid.load_key`).
        quarantine: rows of ``quarantine.csv``.
        records: one manifest row per image kept (with the in-memory ``_order`` and ``_group``).
        images: image id -> pixels.
        seen_uids: unique ids of the items kept (or left out on purpose) so far, for ``duplicate_sop_uid``.
        seen_digests: SHA-256 of the items kept (or left out on purpose) so far, for ``duplicate_image``.
        excluded: class name -> number of items of a source class not in ``data.classes`` (left out, not
            quarantined).
    """

    classes: tuple[str, ...]
    key: bytes
    quarantine: list[dict[str, str]] = field(default_factory=list)
    records: list[dict[str, object]] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    seen_uids: set[str] = field(default_factory=set)
    seen_digests: set[str] = field(default_factory=set)
    excluded: Counter[str] = field(default_factory=Counter)


def read_item(item: Item) -> tuple[bytes | None, str]:
    """(raw bytes, SHA-256) of an item (arrays are hashed by their bytes).

    Args:
        item: the item; its ``read()`` is called here, if it has one.

    Returns:
        The bytes (None for an item without ``read``) and their SHA-256 hex digest (of the array's bytes
        for an array item; ``""`` when there is neither).

    Raises:
        Rejected: the source could not deliver the item.
    """
    raw = item.read() if item.read is not None else None
    if raw is not None:
        digest = hashlib.sha256(raw).hexdigest()
    elif item.array is not None:
        digest = hashlib.sha256(np.ascontiguousarray(item.array).tobytes()).hexdigest()
    else:
        digest = ""
    return raw, digest


def quarantine(item: Item, src: Source, state: IngestState, rej: Rejected, digest: str) -> None:
    """Record ``item`` in ``quarantine.csv`` with the rejection's reason and message.

    The source is told (:meth:`Source.saw <medrobust.data.sources.base.Source.saw>`), so the item's
    labels-table row is not reported as ``image_missing`` as well.

    Args:
        item: the rejected item (its ``ref`` is the row's ``file``).
        src: the source that delivered it.
        state: the loop's state; a row is appended to ``state.quarantine``.
        rej: the rejection (reason, message, and the SOPInstanceUID when known).
        digest: the item's SHA-256 (``""`` when it was not read).
    """
    src.saw(item, rej.uid)
    state.quarantine.append({"file": item.ref, "reason": rej.reason, "message": rej.message,
                             "source_sha256": digest})


def finish(item: Item, src: Source, state: IngestState, digest: str,
            decoded: tuple[np.ndarray, dict[str, str], dict[str, str]]) -> None:
    """Resolve, de-duplicate and record a decoded item (or quarantine it).

    A kept item becomes a manifest record (keyed-hash ``image_id`` and ``patient_id``, de-identified facts,
    ``item.extra``) in ``state.records`` and its pixels go to ``state.images``. An item whose label is a
    source class left out of ``data.classes`` is counted in ``state.excluded``, not quarantined.

    Args:
        item: the item.
        src: the source that delivered it (labels).
        state: what the loop has gathered so far; updated in place.
        digest: the item's SHA-256 (``""`` if unknown), for ``duplicate_image``.
        decoded: (pixels, lookup header, technical facts) from :func:`decode_pixels`.
    """
    classes = state.classes
    try:
        if digest and digest in state.seen_digests:
            raise Rejected("duplicate_image", "byte-identical to an earlier item")
        dec = resolve_item(item, src, *decoded)
        if dec.uid in state.seen_uids:
            raise Rejected("duplicate_sop_uid", "an earlier image has the same SOPInstanceUID")
        if dec.label not in classes:
            if src.classes is not None and dec.label in src.classes:
                state.excluded[dec.label] += 1  # a class left out on purpose (data.classes): counted
                state.seen_digests.add(digest)
                state.seen_uids.add(dec.uid)
                return
            raise Rejected("label_not_allowed", f"label {dec.label!r} is not one of data.classes {list(classes)}")
    except Rejected as rej:
        quarantine(item, src, state, rej, digest)
        return
    state.seen_digests.add(digest)
    state.seen_uids.add(dec.uid)
    image_id = pseudonym(state.key, "image", dec.uid)
    row: dict[str, object] = {
        "image_id": image_id,
        "patient_id": pseudonym(state.key, "patient", dec.group),
        "source_split": item.split or "",
        # internal, dropped before anything is written: order and split must not depend on the
        # pseudonymisation key, or the same params would give other metrics on another machine
        "_order": dec.uid,
        "_group": dec.group,
        "label": dec.label,
        "label_index": classes.index(dec.label),
        "height": int(dec.pixels.shape[-2]) if dec.pixels.ndim >= 2 else 1,
        "width": int(dec.pixels.shape[-1]),
        "pixel_min": float(dec.pixels.min()),
        "pixel_max": float(dec.pixels.max()),
        "source_sha256": digest,
    }
    for tag, value in deidentify_facts(dec.facts, state.key).items():
        row[FACT_COLUMNS.get(tag, tag)] = value
    for k, v in item.extra.items():
        row[k] = v
    state.records.append(row)
    state.images[image_id] = dec.pixels


def process_item(item: Item, src: Source, cfg: DataConfig, state: IngestState) -> None:
    """Read, hash, decode, de-duplicate, label and de-identify one item into ``state`` (or quarantine it).

    Args:
        item: the candidate image.
        src: the source that delivered it (labels).
        cfg: the ``data`` section (image size, DICOM policies).
        state: what the loop has gathered so far.
    """
    digest = ""
    try:
        raw, digest = read_item(item)
        decoded = decode_pixels(item.kind, raw, item.array, item.resize, cfg.image_size, cfg.dicom, cfg.max_pixels)
    except Rejected as rej:
        quarantine(item, src, state, rej, digest)
        return
    finish(item, src, state, digest, decoded)


__all__ = ["FACT_COLUMNS", "Decoded", "IngestState", "decode_pixels", "finish", "process_item", "quarantine",
           "read_item", "resolve_item"]
