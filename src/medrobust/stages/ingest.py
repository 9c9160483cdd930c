"""Stage 1 — ingest: any source (``data.source``) -> de-identified, validated array shards.

Sources (:mod:`medrobust.data.sources`) only find images; everything else happens here, the same
way for every source, so a PACS, a bucket and a folder holding the same DICOM files give the same
dataset (records are ordered by their pseudonymous image id, not by arrival order).

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

import hashlib
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
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


def decode_item(item: Item, source: Source, params: Params, raw: bytes | None) -> _Decoded:
    """Decode one item and resolve its group, unique id and label. Raises :class:`Rejected`."""
    cfg = params.data
    header: dict[str, str] = {}
    facts: dict[str, str] = {}
    if item.kind == "dicom":
        assert raw is not None
        img = decode_dicom(raw, cfg.image_size, cfg.dicom)
        pixels, header, facts = img.pixels, img.header, img.facts
    elif item.kind == "image":
        assert raw is not None
        pixels = decode_image(raw, cfg.image_size)
    else:
        if item.array is None:
            raise Rejected("unreadable", "an array item without an array")
        if item.resize:
            pixels = array_to_image(item.array, cfg.image_size)
        else:
            pixels = np.asarray(item.array, dtype=np.float32)
            if not np.all(np.isfinite(pixels)):
                raise Rejected("invalid_values", "NaN or inf values")
    try:
        return _resolve(item, source, pixels, header, facts)
    except Rejected as rej:
        rej.uid = rej.uid or header.get("SOPInstanceUID")
        raise


def _resolve(item: Item, source: Source, pixels: np.ndarray, header: dict[str, str],
             facts: dict[str, str]) -> _Decoded:
    group = header.get("PatientID") or item.group or ""
    if not group:
        raise Rejected(
            "missing_patient_id",
            "PatientID is empty; add it (DICOM) or a patient_id column (labels CSV) — a patient-level "
            "split needs it" if item.kind != "array" else "the source gives no group for this item",
        )
    uid = header.get("SOPInstanceUID") or item.uid or ""
    if not uid:
        raise Rejected("missing_instance_uid", "the item has no unique id")
    label = source.label(item, header)
    return _Decoded(pixels=pixels, group=group, uid=uid, label=label, facts=facts)


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
    quarantine: list[dict[str, str]] = []
    records: list[dict[str, object]] = []
    images: dict[str, np.ndarray] = {}
    seen_uids: set[str] = set()
    seen_digests: set[str] = set()
    excluded: Counter[str] = Counter()
    n_items = 0
    try:
        for item in tqdm(src.items(), desc=f"ingest {src.name}", mininterval=5, unit="img"):
            n_items += 1
            digest = ""
            try:
                raw = item.read() if item.read is not None else None
                if raw is not None:
                    digest = hashlib.sha256(raw).hexdigest()
                elif item.array is not None:
                    digest = hashlib.sha256(np.ascontiguousarray(item.array).tobytes()).hexdigest()
                if digest in seen_digests:
                    raise Rejected("duplicate_image", "byte-identical to an earlier item")
                dec = decode_item(item, src, params, raw)
                if dec.uid in seen_uids:
                    raise Rejected("duplicate_sop_uid", "an earlier image has the same SOPInstanceUID")
                if dec.label not in classes:
                    if src.classes is not None and dec.label in src.classes:
                        excluded[dec.label] += 1  # a class left out on purpose (data.classes): counted
                        seen_digests.add(digest)
                        seen_uids.add(dec.uid)
                        continue
                    raise Rejected(
                        "label_not_allowed",
                        f"label {dec.label!r} is not one of data.classes {list(classes)}",
                    )
            except Rejected as rej:
                src.saw(item, rej.uid)
                quarantine.append({"file": item.ref, "reason": rej.reason, "message": rej.message,
                                   "source_sha256": digest})
                continue
            seen_digests.add(digest)
            seen_uids.add(dec.uid)
            image_id = pseudonym(key, "image", dec.uid)
            row: dict[str, object] = {
                "image_id": image_id,
                "patient_id": pseudonym(key, "patient", dec.group),
                "source_split": item.split or "",
                "label": dec.label,
                "label_index": classes.index(dec.label),
                "height": int(dec.pixels.shape[-2]) if dec.pixels.ndim >= 2 else 1,
                "width": int(dec.pixels.shape[-1]),
                "pixel_min": float(dec.pixels.min()),
                "pixel_max": float(dec.pixels.max()),
                "source_sha256": digest,
            }
            for tag, value in deidentify_facts(dec.facts, key).items():
                row[FACT_COLUMNS.get(tag, tag)] = value
            for k, v in item.extra.items():
                row[k] = v
            records.append(row)
            images[image_id] = dec.pixels
        leftovers = src.leftovers()
    finally:
        src.close()
    for q in leftovers:
        quarantine.append({"file": q.ref, "reason": q.reason, "message": q.message, "source_sha256": ""})
    n_total = n_items + len(leftovers)
    q_frac = len(quarantine) / max(n_total, 1)
    log.info("decoded %d of %d items, %d quarantined (%.1f%%)", len(records), n_items, len(quarantine), 100 * q_frac)
    if n_items == 0:
        raise IngestError(f"the {src.name} source delivered no items; check its settings under data.{src.name}")

    manifest = pd.DataFrame.from_records(records)
    if manifest.empty:
        manifest = pd.DataFrame(columns=[*BASE_COLUMNS, "source_split"])
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    official = manifest["source_split"].isin(SPLITS)
    if cfg.use_source_splits and len(manifest) and bool(official.all()):
        manifest["split"] = manifest["source_split"]
        split_note = "the source's official splits"
    else:
        assignment = split_patients(manifest["patient_id"].tolist(), cfg.split, params.seed)
        manifest["split"] = manifest["patient_id"].map(assignment)
        split_note = "patient-level split from data.split"
    manifest = manifest.drop(columns=["source_split"])
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
        report = validate_manifest(manifest, classes, params.validation, source=src.name, docs_dir=tmp / "data_docs")
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


__all__ = ["IngestError", "IngestResult", "IngestValidationError", "REASONS", "decode_item", "run"]
