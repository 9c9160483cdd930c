"""Stage 1 — ingest: any source (``data.source``) -> de-identified, validated array shards.

Sources (:mod:`medrobust.data.sources`) only find images; every other step is the same for every
source (:mod:`medrobust.data.items`, :mod:`medrobust.data.pool`), so a PACS, a bucket and a folder
holding the same DICOM files give the same dataset. Records are ordered by their SOPInstanceUID or
source id and split by source patient id (:mod:`medrobust.data.manifest`), never by pseudonym, so
the same params give the same metrics on every machine.

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

Patient identifiers never leave memory: the manifest holds keyed-hash pseudonyms only. If
validation fails, or too many items are quarantined, the stage raises
:class:`IngestValidationError`; the previous outputs stay intact and the report is written to
``<out_dir>.rejected/``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from medrobust.data.deid import load_key, public_ref, public_skipped
from medrobust.data.items import IngestState
from medrobust.data.manifest import QUARANTINE_COLUMNS, build_manifest, write_manifest_shards
from medrobust.data.plots import plot_samples
from medrobust.data.pool import process_items
from medrobust.data.shards import SPLITS
from medrobust.data.sources import Source, SourceError, open_source
from medrobust.data.validation import ValidationReport, validate_manifest
from medrobust.params import Params
from medrobust.utils import atomic_output_dir, write_csv, write_json

log = logging.getLogger(__name__)


class IngestError(SourceError):
    """Ingest cannot start: a missing folder, a malformed labels CSV, refused credentials."""


class IngestValidationError(RuntimeError):
    """The ingested data failed validation; ``report_dir`` holds the readable report.

    Args:
        message: what failed, and where the report is.
        report_dir: the ``<out_dir>.rejected/`` folder (``validation.md``, ``quarantine.csv``...).

    Attributes:
        report_dir: as passed.
    """

    def __init__(self, message: str, report_dir: Path) -> None:
        super().__init__(message)
        self.report_dir = report_dir


@dataclass(frozen=True)
class IngestResult:
    """What ingest wrote: the folder, the number of images kept and quarantined, per-split counts.

    Attributes:
        out_dir: the stage's output folder.
        n_images: images in the manifest.
        n_quarantined: items not ingested (``quarantine.csv``), labels without an image included.
        split_counts: split name -> number of images.
        validation_success: whether every validation check passed.
    """

    out_dir: Path
    n_images: int
    n_quarantined: int
    split_counts: dict[str, int]
    validation_success: bool

    @property
    def validation_report(self) -> Path:
        """``validation.md`` (the readable Great Expectations summary)."""
        return self.out_dir / "validation.md"


def run(
    params: Params,
    out_dir: str | Path,
    dicom_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
    source: Source | None = None,
    raw_dir: str | Path | None = None,
) -> IngestResult:
    """Ingest the configured source (``data.source``).

    Args:
        params: validated params (``data``, ``validation``, ``seed`` are used).
        out_dir: the stage's output folder (replaced atomically on success).
        dicom_dir: folder sources: overrides ``params.data.dicom_dir``.
        labels_csv: overrides ``params.data.labels_csv``.
        source: an already opened source (tests, benchmarks); default: the one ``data.source`` names.
        raw_dir: the synthesize stage's output (``dicom/`` + ``labels.csv``, e.g. a Kubeflow
            artifact); folder sources read it, the others ignore it.

    Returns:
        The counts; the files are in ``out_dir``.

    Raises:
        IngestError: the source cannot be read (missing inputs, malformed labels CSV, refused
            credentials, an unreachable server).
        IngestValidationError: quarantine fraction too high or a GX expectation failed.
    """
    cfg = params.data
    out_dir = Path(out_dir)
    overrides: dict[str, Any] = {k: v for k, v in (("dicom_dir", dicom_dir), ("labels_csv", labels_csv),
                                                    ("raw_dir", raw_dir)) if v is not None}
    try:
        src = source or open_source(cfg, **overrides)
    except IngestError:
        raise
    except SourceError as exc:
        raise IngestError(str(exc)) from None
    classes = tuple(cfg.classes)
    if src.classes is not None and not set(classes) <= set(src.classes):
        raise IngestError(f"data.classes {list(classes)} are not classes of the {src.name} source; "
                          f"allowed values: {list(src.classes)}")
    state = IngestState(classes=classes, key=load_key())
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    try:
        n_items = process_items(tqdm(src.items(), desc=f"ingest {src.name}", mininterval=5, unit="img"),
                                src, cfg, state, workers)
        leftovers = src.leftovers()
    except IngestError:
        raise
    except SourceError as exc:  # e.g. credentials refused when the listing starts
        raise IngestError(str(exc)) from None
    finally:
        src.close()
    # operator files name items by a keyed hash of their reference, never by a raw source path
    quarantine = [{**q, "file": public_ref(state.key, q["file"])} for q in state.quarantine] + [
        {"file": public_ref(state.key, q.ref), "reason": q.reason, "message": q.message, "source_sha256": ""}
        for q in leftovers]
    n_total = n_items + len(leftovers)
    q_frac = len(quarantine) / max(n_total, 1)
    log.info("decoded %d of %d items, %d quarantined (%.1f%%)", len(state.records), n_items, len(quarantine),
             100 * q_frac)
    if n_items == 0:
        raise IngestError(f"the {src.name} source delivered no items; check its settings under data.{src.name}")
    manifest, split_note = build_manifest(state.records, cfg.split, params.seed, cfg.use_source_splits)

    with atomic_output_dir(out_dir) as tmp:
        manifest = write_manifest_shards(tmp, manifest, state.images, cfg.shard_size)
        report = validate_manifest(manifest, classes, params.validation, source=src.name,
                                   docs_dir=tmp / "data_docs", image_size=cfg.image_size)
        if q_frac > params.validation.max_quarantine_fraction:
            report.add_failure("quarantine", "max_quarantine_fraction",
                               f"{len(quarantine)}/{n_total} items ({q_frac:.1%}) quarantined; "
                               f"allowed {params.validation.max_quarantine_fraction:.1%}")
        write_csv(manifest, tmp / "manifest.csv")  # text cells escaped against formula injection
        write_csv(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), tmp / "quarantine.csv")
        write_json(tmp / "validation.json", {"success": report.success, "checks": report.checks, "gx": report.raw})
        (tmp / "validation.md").write_text(report.to_markdown())
        split_counts = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
        write_json(tmp / "ingest.json", {
            "source": src.name,
            "items": n_items,
            "images": len(manifest),
            "quarantined": len(quarantine),
            "quarantine_fraction": q_frac,
            "quarantine_reasons": dict(Counter(q["reason"] for q in quarantine)),
            "labels_without_image": sum(q.reason == "image_missing" for q in leftovers),
            "excluded_classes": dict(state.excluded),
            "skipped_files": [public_skipped(state.key, s) for s in getattr(src, "skipped", [])],
            "patients": int(manifest["patient_id"].nunique()),
            "split_by": split_note,
            "splits": split_counts,
            "classes": {c: int((manifest["label"] == c).sum()) for c in classes},
            "image_size": cfg.image_size,
            "validation_success": report.success,
        })
        images = state.images
        if images and all(v.ndim == 2 and min(v.shape) > 1 for v in images.values()):
            plot_samples([images[i] for i in manifest["image_id"]], manifest["label"].tolist(), classes,
                         tmp / "samples.png")
        if not report.success:
            rejected = out_dir.with_name(out_dir.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            shutil.copytree(tmp, rejected, ignore=shutil.ignore_patterns("shards"))
            _raise_validation(report, rejected)
    log.info("ingest: %d images in %s; splits %s (%s)", len(manifest), out_dir, split_counts, split_note)
    return IngestResult(out_dir, len(manifest), len(quarantine), split_counts, report.success)


def locate(params: Params, ref: str, dicom_dir: str | Path | None = None,
           labels_csv: str | Path | None = None) -> list[str]:
    """The raw source references behind a public one (quarantine.csv's ``file``, a ``skipped_files`` entry).

    Operator files name items only by :func:`~medrobust.data.deid.public_ref`. This re-lists the
    configured source on this machine, with this machine's pseudonymisation key, and returns the
    references that hash to ``ref``. No image is decoded, and nothing is written: the raw paths
    it returns can hold patient identifiers and are for the operator's terminal only.

    Args:
        params: validated params (``data`` names the source).
        ref: the public reference, e.g. ``fil-0123456789abcdef.dcm``.
        dicom_dir: folder sources: overrides ``params.data.dicom_dir``.
        labels_csv: overrides ``params.data.labels_csv``.

    Returns:
        The matching raw references (normally one; empty when the source no longer holds it or the
        key differs from the one ingest used).

    Raises:
        IngestError: the source cannot be opened.
    """
    overrides = {k: v for k, v in (("dicom_dir", dicom_dir), ("labels_csv", labels_csv)) if v is not None}
    key, want = load_key(), ref.strip()
    try:
        src = open_source(params.data, **overrides)
    except SourceError as exc:
        raise IngestError(str(exc)) from None
    try:
        found = [i.ref for i in src.items() if public_ref(key, i.ref) == want]
        found += [q.ref for q in src.leftovers() if public_ref(key, q.ref) == want]
        for entry in getattr(src, "skipped", []):
            public = public_skipped(key, entry)  # "<ref>" or "<ref> (<why>)": either form finds it
            if want in (public, public.split(" (", 1)[0]):
                found.append(entry)
    except SourceError as exc:
        raise IngestError(str(exc)) from None
    finally:
        src.close()
    return found


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


__all__ = ["IngestError", "IngestResult", "IngestValidationError", "locate", "run"]
