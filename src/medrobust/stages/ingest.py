"""Stage 1 — ingest: a DICOM folder + labels CSV -> de-identified, validated array shards.

Outputs (in ``out_dir``, written atomically):

* ``manifest.csv`` — one row per image: pseudonymous ``image_id`` and ``patient_id``, split,
  label, shape, pixel range, shard reference, the source file's SHA-256, and non-identifying
  technical facts (modality, photometric interpretation, bits stored);
* ``shards/<split>-NNNN.npy`` — float32 (N, 1, S, S) images in [0, 1];
* ``quarantine.csv`` — every file that was not ingested, with a reason and a message;
* ``validation.json`` / ``validation.md`` — the Great Expectations results;
* ``ingest.json`` — counts per split, class and quarantine reason;
* ``samples.png`` — a few images per class, to look at.

Patient identifiers never leave this function: the manifest holds keyed-hash pseudonyms only.
If validation fails, or too many files are quarantined, the stage raises
:class:`IngestValidationError`; the previous outputs stay intact and the report is written to
``<out_dir>.rejected/``.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medrobust.config import Params
from medrobust.data.deid import load_key, pseudonym
from medrobust.data.dicom import REASONS, DicomRejected, decode_dicom
from medrobust.data.shards import SPLITS, write_shards
from medrobust.data.split import split_patients
from medrobust.data.validation import ValidationReport, validate_manifest
from medrobust.utils import atomic_output_dir, sha256_file, write_json

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["file", "reason", "message", "source_sha256"]
SKIP_NAMES = {"DICOMDIR"}


class IngestError(RuntimeError):
    """Ingest cannot start: a missing folder, a malformed labels CSV."""


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


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Labels CSV -> (SOPInstanceUID -> label, SOPInstanceUID -> problem).

    Raises:
        IngestError: if the file is missing or lacks the ``SOPInstanceUID`` / ``label`` columns.
    """
    if not path.is_file():
        raise IngestError(f"labels CSV not found: {path} (set data.labels_csv in params.yaml)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "SOPInstanceUID" not in cols or "label" not in cols:
            raise IngestError(
                f"{path}: needs columns 'SOPInstanceUID' and 'label', found {cols}; "
                "write one row per image keyed by its SOPInstanceUID"
            )
        labels: dict[str, str] = {}
        problems: dict[str, str] = {}
        for row in reader:
            uid, label = (row["SOPInstanceUID"] or "").strip(), (row["label"] or "").strip()
            if not uid:
                continue
            if uid in labels and labels[uid] != label:
                problems[uid] = f"conflicting labels {labels[uid]!r} and {label!r} in the labels CSV"
            labels[uid] = label
    return labels, problems


def _list_files(root: Path) -> tuple[list[Path], list[str]]:
    """(candidate image files, skipped files): DICOMDIR indexes and hidden files are not images."""
    files, skipped = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            if p.name in SKIP_NAMES or p.name.startswith("."):
                skipped.append(str(p.relative_to(root)))
            else:
                files.append(p)
    return files, skipped


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


def run(
    params: Params,
    out_dir: str | Path,
    dicom_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
) -> IngestResult:
    """Ingest a DICOM folder.

    Args:
        params: validated params (``data``, ``validation``, ``seed`` are used).
        out_dir: the stage's output folder (replaced atomically on success).
        dicom_dir: defaults to ``params.data.dicom_dir``.
        labels_csv: defaults to ``params.data.labels_csv``.

    Raises:
        IngestError: missing inputs or malformed labels CSV.
        IngestValidationError: quarantine fraction too high or a GX expectation failed.
    """
    cfg = params.data
    dicom_dir = Path(dicom_dir or cfg.dicom_dir)
    labels_csv = Path(labels_csv or cfg.labels_csv)
    out_dir = Path(out_dir)
    if not dicom_dir.is_dir():
        raise IngestError(f"DICOM folder not found: {dicom_dir} (set data.dicom_dir in params.yaml)")
    labels, label_problems = read_labels(labels_csv)
    key = load_key()

    files, skipped = _list_files(dicom_dir)
    if skipped:
        log.info("skipped %d index/hidden files (DICOMDIR, dot-files); listed in ingest.json", len(skipped))
    if not files:
        raise IngestError(f"no files under {dicom_dir}")
    quarantine: list[dict[str, str]] = []
    records: list[dict[str, object]] = []
    images: list[np.ndarray] = []
    seen_sops: set[str] = set()
    for path in tqdm(files, desc="ingest", mininterval=5):
        rel = str(path.relative_to(dicom_dir))
        digest = sha256_file(path)
        try:
            img = decode_dicom(path, cfg.image_size)
            uid = img.sop_instance_uid
            if uid in seen_sops:
                raise DicomRejected("duplicate_sop_uid", "an earlier file has the same SOPInstanceUID")
            if uid in label_problems:
                raise DicomRejected("label_not_allowed", label_problems[uid])
            if uid not in labels:
                raise DicomRejected("missing_label", f"add a row for this image to {labels_csv.name}")
            if labels[uid] not in cfg.classes:
                raise DicomRejected(
                    "label_not_allowed",
                    f"label {labels[uid]!r} is not one of data.classes {list(cfg.classes)}",
                )
        except DicomRejected as rej:
            quarantine.append({"file": rel, "reason": rej.reason, "message": rej.message, "source_sha256": digest})
            continue
        seen_sops.add(uid)
        label = labels[uid]
        records.append({
            "image_id": pseudonym(key, "image", uid),
            "patient_id": pseudonym(key, "patient", img.patient_id),
            "label": label,
            "label_index": cfg.classes.index(label),
            "height": cfg.image_size,
            "width": cfg.image_size,
            "source_rows": img.rows,
            "source_columns": img.columns,
            "modality": img.modality,
            "photometric": img.photometric,
            "bits_stored": img.bits_stored,
            "pixel_min": float(img.pixels.min()),
            "pixel_max": float(img.pixels.max()),
            "source_sha256": digest,
        })
        images.append(img.pixels)
    # files named in the CSV that never showed up: reported, not silently ignored
    missing_images = sorted(set(labels) - seen_sops - {u for u in label_problems})
    n_total = len(files)
    q_frac = len(quarantine) / n_total
    log.info("decoded %d of %d files, %d quarantined (%.1f%%)", len(records), n_total, len(quarantine), 100 * q_frac)

    manifest = pd.DataFrame.from_records(records)
    if manifest.empty:
        manifest = pd.DataFrame(columns=["image_id", "patient_id", "split", "label", "label_index"])
    assignment = split_patients(manifest["patient_id"].tolist(), cfg.split, params.seed)
    manifest["split"] = manifest["patient_id"].map(assignment)
    quarantine_df = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)

    with atomic_output_dir(out_dir) as tmp:
        # shards, split by split, keeping manifest order within each split
        manifest["shard"], manifest["shard_index"] = "", -1
        for split in SPLITS:
            idx = np.flatnonzero(manifest["split"].to_numpy() == split)
            refs = write_shards(tmp, split, [images[i] for i in idx], cfg.shard_size)
            manifest.loc[idx, "shard"] = [r[0] for r in refs]
            manifest.loc[idx, "shard_index"] = [r[1] for r in refs]
        manifest = manifest[[
            "image_id", "patient_id", "split", "label", "label_index", "height", "width",
            "pixel_min", "pixel_max", "shard", "shard_index", "source_sha256",
            "modality", "photometric", "bits_stored", "source_rows", "source_columns",
        ]]
        report = validate_manifest(manifest, cfg.classes, params.validation)
        if q_frac > params.validation.max_quarantine_fraction:
            report.success = False
            report.checks.append({
                "table": "quarantine", "expectation": "max_quarantine_fraction", "column": None,
                "success": False,
                "details": f"{len(quarantine)}/{n_total} files ({q_frac:.1%}) quarantined; "
                           f"allowed {params.validation.max_quarantine_fraction:.1%}",
            })
        manifest.to_csv(tmp / "manifest.csv", index=False)
        quarantine_df.to_csv(tmp / "quarantine.csv", index=False)
        write_json(tmp / "validation.json", {"success": report.success, "checks": report.checks, "gx": report.raw})
        (tmp / "validation.md").write_text(report.to_markdown())
        split_counts = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
        summary = {
            "files": n_total,
            "images": len(manifest),
            "quarantined": len(quarantine),
            "quarantine_fraction": q_frac,
            "quarantine_reasons": dict(Counter(q["reason"] for q in quarantine)),
            "labels_without_image": len(missing_images),
            "skipped_files": skipped,
            "patients": int(manifest["patient_id"].nunique()),
            "splits": split_counts,
            "classes": {c: int((manifest["label"] == c).sum()) for c in cfg.classes},
            "image_size": cfg.image_size,
            "validation_success": report.success,
        }
        write_json(tmp / "ingest.json", summary)
        if images:
            _sample_grid(images, manifest["label"].tolist(), cfg.classes, tmp / "samples.png")
        if not report.success:
            rejected = out_dir.with_name(out_dir.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            shutil.copytree(tmp, rejected, ignore=shutil.ignore_patterns("shards"))
            _raise_validation(report, rejected)
    if missing_images:
        log.warning("%d label rows have no matching image file", len(missing_images))
    log.info("ingest: %d images in %s; splits %s", len(manifest), out_dir, split_counts)
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


__all__ = ["IngestError", "IngestResult", "IngestValidationError", "REASONS", "run"]
