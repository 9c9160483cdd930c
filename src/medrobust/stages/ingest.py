"""Stage 1 — ingest: any source (``data.source``) -> de-identified, validated array shards.

Sources (:mod:`medrobust.data.sources`) only find images; everything else happens here, the same
way for every source, so a PACS, a bucket and a folder holding the same DICOM files give the same
dataset (records are ordered by their SOPInstanceUID or source id, not by arrival order; the order and
the patient split never depend on the pseudonymisation key, so the same params give the same
metrics on every machine).

Outputs (in ``out_dir``, written atomically):

* ``manifest.csv`` — one row per image: pseudonymous ``image_id`` and ``patient_id``, split,
  label, shape, pixel range, shard reference, the source file's SHA-256, and non-identifying
  technical facts (modality, photometric interpretation, bits stored...) that passed the
  PS3.15 Annex E basic-profile filter;
* ``shards/<split>-NNNN.npy`` — float32 (N, 1, S, S) images in [0, 1];
* ``quarantine.csv`` — every item that was not ingested, with a reason and a message;
* ``validation.json`` / ``validation.md`` / ``data_docs/`` — the Great Expectations results;
* ``ingest.json`` — counts per split, class and quarantine reason;
* ``samples.png`` — a few images per class, to look at.

Patient identifiers never leave this function: the manifest holds keyed-hash pseudonyms only.
If validation fails, or too many items are quarantined, the stage raises
:class:`IngestValidationError`; the previous outputs stay intact and the report is written to
``<out_dir>.rejected/``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medrobust.config import Params
from medrobust.data.deid import deidentify_facts, load_key, pseudonym
from medrobust.data.dicom import array_to_image, decode_dicom, decode_image
from medrobust.data.shards import SPLITS, write_shards
from medrobust.data.sources import REASONS, Item, Rejected, Source, SourceError, open_source
from medrobust.data.split import split_patients
from medrobust.data.validation import ValidationReport, validate_manifest
from medrobust.utils import atomic_output_dir, write_json

log = logging.getLogger(__name__)

POOL_MIN_ITEMS = 256  # fewer items are decoded in-process (a pool's start-up would cost more)
POOL_CHUNK = 16  # items per worker task
QUARANTINE_COLUMNS = ["file", "reason", "message", "source_sha256"]
BASE_COLUMNS = [
    "image_id", "patient_id", "split", "label", "label_index", "height", "width",
    "pixel_min", "pixel_max", "shard", "shard_index", "source_sha256",
    "modality", "photometric", "bits_stored", "source_rows", "source_columns",
]
FACT_COLUMNS = {
    "Modality": "modality", "PhotometricInterpretation": "photometric", "BitsStored": "bits_stored",
    "Rows": "source_rows", "Columns": "source_columns", "NumberOfFrames": "frames",
    "SamplesPerPixel": "samples_per_pixel", "BodyPartExamined": "body_part", "ViewPosition": "view_position",
    "ImageLaterality": "laterality", "TransferSyntaxUID": "transfer_syntax",
}


class IngestError(SourceError):
    """Ingest cannot start: a missing folder, a malformed labels CSV, refused credentials."""


class IngestValidationError(RuntimeError):
    """The ingested data failed validation; ``report_dir`` holds the readable report."""

    def __init__(self, message: str, report_dir: Path) -> None:
        super().__init__(message)
        self.report_dir = report_dir


@dataclass(frozen=True)
class IngestResult:
    out_dir: Path
    n_images: int
    n_quarantined: int
    split_counts: dict[str, int]
    validation_success: bool


def _sample_grid(images: list[np.ndarray], labels: list[str], classes: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = 6
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.8 * len(classes)))
    axes = np.atleast_2d(axes)
    for r, cls in enumerate(classes):
        idx = [i for i, lbl in enumerate(labels) if lbl == cls][:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(images[idx[c]], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(cls, loc="left", fontsize=9)
    fig.suptitle("ingested samples (display space, [0, 1])", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass
class _Decoded:
    pixels: np.ndarray
    group: str
    uid: str
    label: str
    facts: dict[str, str]


def decode_pixels(kind: str, raw: bytes | None, array: np.ndarray | None, resize: bool, size: int,
                  dicom_cfg: Any) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """(pixels, lookup header, technical facts) of one item; pure, so it can run in a worker process.

    Raises:
        Rejected: the item cannot be decoded.
    """
    if kind == "dicom":
        assert raw is not None
        img = decode_dicom(raw, size, dicom_cfg)
        return img.pixels, img.header, img.facts
    if kind == "image":
        assert raw is not None
        return decode_image(raw, size), {}, {}
    if array is None:
        raise Rejected("unreadable", "an array item without an array")
    if resize:
        return array_to_image(array, size), {}, {}
    pixels = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(pixels)):
        raise Rejected("invalid_values", "NaN or inf values")
    return pixels, {}, {}


def resolve_item(item: Item, source: Source, pixels: np.ndarray, header: dict[str, str],
                 facts: dict[str, str]) -> _Decoded:
    """Group, unique id and label of a decoded item (main process: label tables live here).

    Raises:
        Rejected: carrying the item's SOPInstanceUID, so its label row is not reported missing too.
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
    return _Decoded(pixels=pixels, group=group, uid=uid, label=label, facts=facts)


@dataclass
class _State:
    """What the item loop accumulates."""

    classes: tuple[str, ...]
    key: bytes
    quarantine: list[dict[str, str]] = field(default_factory=list)
    records: list[dict[str, object]] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    seen_uids: set[str] = field(default_factory=set)
    seen_digests: set[str] = field(default_factory=set)
    excluded: Counter[str] = field(default_factory=Counter)


def _read_item(item: Item) -> tuple[bytes | None, str]:
    """(raw bytes, SHA-256) of an item."""
    raw = item.read() if item.read is not None else None
    if raw is not None:
        digest = hashlib.sha256(raw).hexdigest()
    elif item.array is not None:
        digest = hashlib.sha256(np.ascontiguousarray(item.array).tobytes()).hexdigest()
    else:
        digest = ""
    return raw, digest


def _quarantine(item: Item, src: Source, state: _State, rej: Rejected, digest: str) -> None:
    src.saw(item, rej.uid)
    state.quarantine.append({"file": item.ref, "reason": rej.reason, "message": rej.message,
                             "source_sha256": digest})


def _finish(item: Item, src: Source, state: _State, digest: str,
            decoded: tuple[np.ndarray, dict[str, str], dict[str, str]]) -> None:
    """Resolve, de-duplicate and record a decoded item (or quarantine it)."""
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
        _quarantine(item, src, state, rej, digest)
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


def process_item(item: Item, src: Source, params: Params, state: _State) -> None:
    """Read, hash, decode, de-duplicate, label and de-identify one item into ``state`` (or quarantine it)."""
    digest = ""
    try:
        raw, digest = _read_item(item)
        decoded = decode_pixels(item.kind, raw, item.array, item.resize, params.data.image_size, params.data.dicom)
    except Rejected as rej:
        _quarantine(item, src, state, rej, digest)
        return
    _finish(item, src, state, digest, decoded)


def _pool_decode(jobs: list[tuple[str, bytes | None, np.ndarray | None, bool, int, Any]]) -> list[tuple[Any, ...]]:
    """Worker side: decode a chunk; picklable outcomes (exceptions with custom args do not pickle)."""
    out: list[tuple[Any, ...]] = []
    for job in jobs:
        raw = job[1]
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else ""
        try:
            out.append(("ok", digest, decode_pixels(*job)))
        except Rejected as rej:
            out.append(("rejected", digest, rej.reason, rej.message, rej.uid))
    return out


def process_items(items: Iterable[Item], src: Source, params: Params, state: _State,
                  workers: int) -> int:
    """All items through :func:`process_item`; with ``workers > 1`` decoding runs in a process pool.

    The main process reads (network/disk), labels and records, in item order; workers hash and
    decode the bytes. So the result is identical with and without the pool; at most ``2 * workers`` chunks of
    :data:`POOL_CHUNK` raw items are in flight, so memory stays bounded however large the source.
    Returns the number of items.
    """
    it = iter(items)
    n = 0
    if workers <= 1:
        for item in it:
            n += 1
            process_item(item, src, params, state)
        return n
    head = list(itertools.islice(it, POOL_MIN_ITEMS))
    if len(head) < POOL_MIN_ITEMS:  # small sources: a pool costs more than it saves
        for item in head:
            process_item(item, src, params, state)
        return len(head)
    size, dcfg = params.data.image_size, params.data.dicom
    # fork: workers start in milliseconds with everything imported. They run only numpy, Pillow and
    # pydicom (decode_pixels never touches torch), so the parent's torch/OpenMP state cannot bite.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    window: collections.deque[tuple[list[tuple[Item, str]], Any]] = collections.deque()
    chunk: list[tuple[Item, str]] = []
    jobs: list[tuple[str, bytes | None, np.ndarray | None, bool, int, Any]] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:

        def drain(limit: int) -> None:
            while len(window) > limit:
                members, fut = window.popleft()
                for (item, digest), out in zip(members, fut.result(), strict=True):
                    digest = digest or out[1]  # bytes are hashed in the worker, arrays here
                    if out[0] == "ok":
                        _finish(item, src, state, digest, out[2])
                    else:
                        rej = Rejected(out[2], out[3])
                        rej.uid = out[4]
                        _quarantine(item, src, state, rej, digest)

        def submit() -> None:
            nonlocal chunk, jobs
            if chunk:
                window.append((chunk, pool.submit(_pool_decode, jobs)))
                chunk, jobs = [], []
                drain(2 * workers)

        for item in itertools.chain(head, it):
            n += 1
            try:
                if item.read is not None:
                    raw, digest = item.read(), ""
                else:
                    raw, digest = _read_item(item)
            except Rejected as rej:  # keep item order: everything before it first
                submit()
                drain(0)
                _quarantine(item, src, state, rej, "")
                continue
            chunk.append((item, digest))
            jobs.append((item.kind, raw, item.array, item.resize, size, dcfg))
            if len(chunk) >= POOL_CHUNK:
                submit()
        submit()
        drain(0)
    return n


def run(
    params: Params,
    out_dir: str | Path,
    dicom_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
    source: Source | None = None,
) -> IngestResult:
    """Ingest the configured source (``data.source``).

    Args:
        params: validated params (``data``, ``validation``, ``seed`` are used).
        out_dir: the stage's output folder (replaced atomically on success).
        dicom_dir: folder sources: overrides ``params.data.dicom_dir``.
        labels_csv: overrides ``params.data.labels_csv``.
        source: an already opened source (tests, benchmarks); default: :func:`open_source`.

    Raises:
        IngestError: the source cannot be read (missing inputs, malformed labels CSV, refused
            credentials, an unreachable server).
        IngestValidationError: quarantine fraction too high or a GX expectation failed.
    """
    cfg = params.data
    out_dir = Path(out_dir)
    overrides: dict[str, Any] = {}
    if dicom_dir is not None:
        overrides["dicom_dir"] = dicom_dir
    if labels_csv is not None:
        overrides["labels_csv"] = labels_csv
    try:
        src = source or open_source(params, **overrides)
    except IngestError:
        raise
    except SourceError as exc:
        raise IngestError(str(exc)) from None
    key = load_key()
    classes = tuple(cfg.classes)
    if src.classes is not None and not set(classes) <= set(src.classes):
        raise IngestError(
            f"data.classes {list(classes)} are not classes of the {src.name} source; "
            f"allowed values: {list(src.classes)}"
        )
    state = _State(classes=classes, key=key)
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    try:
        n_items = process_items(tqdm(src.items(), desc=f"ingest {src.name}", mininterval=5, unit="img"),
                                src, params, state, workers)
        leftovers = src.leftovers()
    except IngestError:
        raise
    except SourceError as exc:  # e.g. credentials refused when the listing starts
        raise IngestError(str(exc)) from None
    finally:
        src.close()
    quarantine, records, images, excluded = state.quarantine, state.records, state.images, state.excluded
    for q in leftovers:
        quarantine.append({"file": q.ref, "reason": q.reason, "message": q.message, "source_sha256": ""})
    n_total = n_items + len(leftovers)
    q_frac = len(quarantine) / max(n_total, 1)
    log.info("decoded %d of %d items, %d quarantined (%.1f%%)", len(records), n_items, len(quarantine), 100 * q_frac)
    if n_items == 0:
        raise IngestError(f"the {src.name} source delivered no items; check its settings under data.{src.name}")

    manifest = pd.DataFrame.from_records(records)
    if manifest.empty:
        manifest = pd.DataFrame(columns=[*BASE_COLUMNS, "source_split", "_order", "_group"])
    manifest = manifest.sort_values("_order", kind="stable").reset_index(drop=True)
    official = manifest["source_split"].isin(SPLITS)
    if cfg.use_source_splits and len(manifest) and bool(official.all()):
        manifest["split"] = manifest["source_split"]
        split_note = "the source's official splits"
    else:
        assignment = split_patients(manifest["_group"].tolist(), cfg.split, params.seed)
        manifest["split"] = manifest["_group"].map(assignment)
        split_note = "patient-level split from data.split"
    manifest = manifest.drop(columns=["source_split", "_order", "_group"])
    for col in BASE_COLUMNS:
        if col not in manifest.columns:
            manifest[col] = ""
    quarantine_df = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)

    with atomic_output_dir(out_dir) as tmp:
        manifest["shard"], manifest["shard_index"] = "", -1
        for split in SPLITS:
            idx = np.flatnonzero(manifest["split"].to_numpy() == split)
            refs = write_shards(tmp, split, [images[manifest.at[i, "image_id"]] for i in idx], cfg.shard_size)
            manifest.loc[idx, "shard"] = [r[0] for r in refs]
            manifest.loc[idx, "shard_index"] = [r[1] for r in refs]
        extra_cols = sorted(c for c in manifest.columns if c not in BASE_COLUMNS)
        manifest = manifest[[*BASE_COLUMNS, *extra_cols]]
        report = validate_manifest(manifest, classes, params.validation, source=src.name,
                                   docs_dir=tmp / "data_docs", image_size=cfg.image_size)
        if q_frac > params.validation.max_quarantine_fraction:
            report.success = False
            report.checks.append({
                "table": "quarantine", "expectation": "max_quarantine_fraction", "column": None,
                "success": False,
                "details": f"{len(quarantine)}/{n_total} items ({q_frac:.1%}) quarantined; "
                           f"allowed {params.validation.max_quarantine_fraction:.1%}",
            })
        manifest.to_csv(tmp / "manifest.csv", index=False)
        quarantine_df.to_csv(tmp / "quarantine.csv", index=False)
        write_json(tmp / "validation.json", {"success": report.success, "checks": report.checks, "gx": report.raw})
        (tmp / "validation.md").write_text(report.to_markdown())
        split_counts = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
        summary = {
            "source": src.name,
            "items": n_items,
            "images": len(manifest),
            "quarantined": len(quarantine),
            "quarantine_fraction": q_frac,
            "quarantine_reasons": dict(Counter(q["reason"] for q in quarantine)),
            "labels_without_image": sum(q.reason == "image_missing" for q in leftovers),
            "excluded_classes": dict(excluded),
            "skipped_files": list(getattr(src, "skipped", [])),
            "patients": int(manifest["patient_id"].nunique()),
            "split_by": split_note,
            "splits": split_counts,
            "classes": {c: int((manifest["label"] == c).sum()) for c in classes},
            "image_size": cfg.image_size,
            "validation_success": report.success,
        }
        write_json(tmp / "ingest.json", summary)
        if images and all(v.ndim == 2 and min(v.shape) > 1 for v in images.values()):
            _sample_grid([images[i] for i in manifest["image_id"]], manifest["label"].tolist(), classes,
                         tmp / "samples.png")
        if not report.success:
            rejected = out_dir.with_name(out_dir.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            shutil.copytree(tmp, rejected, ignore=shutil.ignore_patterns("shards"))
            _raise_validation(report, rejected)
    log.info("ingest: %d images in %s; splits %s (%s)", len(manifest), out_dir, split_counts, split_note)
    return IngestResult(out_dir, len(manifest), len(quarantine), split_counts, report.success)


def _raise_validation(report: ValidationReport, rejected: Path) -> None:
    failed = "\n".join(
        f"  - {c['table']}: {c['expectation']}({c.get('column') or ''}) {c.get('details', '')}"
        for c in report.failures
    )
    raise IngestValidationError(
        f"ingest validation failed; previous outputs left intact. Failed checks:\n{failed}\n"
        f"Full report: {rejected / 'validation.md'}; quarantined files: {rejected / 'quarantine.csv'}",
        rejected,
    )


__all__ = ["IngestError", "IngestResult", "IngestValidationError", "REASONS", "decode_pixels", "process_items", "run"]
