"""``medrobust bench ingest``: ingest throughput as a ratio to bare pydicom decoding.

The benchmark writes N synthetic DICOM files (the embedded generator: 12/16-bit, MONOCHROME1/2,
rescale, VOI windows), then, alternating ``repeats`` times so that machine noise hits both sides:

* **bare pydicom** — ``pydicom.dcmread(path).pixel_array`` for every file: the floor any DICOM
  reader pays;
* **medrobust** — the ingest stage's own item loop (:func:`medrobust.data.pool.process_items`):
  read, SHA-256, decode, modality/VOI LUT, MONOCHROME1 inversion, resize, de-duplication, label
  lookup, pseudonyms, the Annex E filter — with its decode worker processes (``data.workers``;
  the time includes starting them) and, for reference, in one process.

It reports files/s of each (best of the repeats) and the ratio (goal ≥ 0.8), plus the files/s of
the whole stage (``ingest.run``: the loop above plus splitting, shards, Great Expectations, Data
Docs), whose fixed costs dominate at small N.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from medrobust.data.deid import load_key
from medrobust.data.items import IngestState
from medrobust.data.pool import process_items
from medrobust.data.sources import open_source
from medrobust.data.synthetic import generate_tree
from medrobust.params import Params
from medrobust.stages import ingest

log = logging.getLogger(__name__)


def _bare(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in files:
        ds = pydicom.dcmread(p)
        _ = ds.pixel_array
    return time.perf_counter() - t0


def _ours(params: Params, root: Path, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    src = open_source(params.data, raw_dir=root)
    state = IngestState(classes=tuple(params.data.classes), key=load_key())
    process_items(src.items(), src, params.data, state, workers)
    dt = time.perf_counter() - t0
    return dt, len(state.records)


def bench_ingest(params: Params, n_files: int = 1000, repeats: int = 3, stage: bool = True) -> dict[str, Any]:
    """Ingest throughput against bare pydicom on the same ``n_files`` synthetic files.

    Args:
        params: the configuration (``data.image_size``, ``data.workers``, ``data.synthetic``).
        n_files: synthetic DICOM files to write and ingest.
        repeats: alternating rounds; the best of each side is reported.
        stage: also time the whole ingest stage (GX validation, Data Docs, shards).

    Returns:
        A JSON-able report (see the module docstring).
    """
    per_patient = 4
    params = params.updated({
        "data": {"source": "dicom_folder", "synthetic": {"n_patients": max(3, n_files // per_patient),
                                                          "images_per_patient_min": per_patient,
                                                          "images_per_patient_max": per_patient}},
        "validation": {"max_quarantine_fraction": 1.0},
    })
    syn = params.data.synthetic
    with tempfile.TemporaryDirectory(prefix="medrobust-bench-ingest-") as tmp:
        root = Path(tmp)
        generate_tree(root, syn)
        files = sorted((root / "dicom").rglob("*.dcm"))
        log.info("bench ingest: %d files of %dx%d px", len(files), syn.image_size, syn.image_size)
        workers = params.data.workers or min(os.cpu_count() or 1, 4)
        _bare(files[:50])  # warm the page cache and imports on both sides
        _ours(params, root, 1)
        bare, ours, single, n_ok = [], [], [], 0
        for _ in range(repeats):
            bare.append(_bare(files))
            dt, n_ok = _ours(params, root, workers)
            ours.append(dt)
            single.append(_ours(params, root, 1)[0])
        report: dict[str, Any] = {
            "n_files": len(files),
            "source_image_size": syn.image_size,
            "output_image_size": params.data.image_size,
            "repeats": repeats,
            "bare_pydicom_files_per_s": len(files) / min(bare),
            "workers": workers,
            "medrobust_files_per_s": len(files) / min(ours),
            "ratio": min(bare) / min(ours),
            "medrobust_one_process_files_per_s": len(files) / min(single),
            "ratio_one_process": min(bare) / min(single),
            "ingested": n_ok,
        }
        if stage:
            t0 = time.perf_counter()
            ingest.run(params, root / "out", raw_dir=root)
            report["stage_files_per_s"] = len(files) / (time.perf_counter() - t0)
    return report


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the command and a table of files/s and ratios.

    Args:
        report: :func:`bench_ingest`'s report.
        command: the command line that reproduces it.

    Returns:
        The markdown page.
    """
    r = report
    return "\n".join([
        "# Ingest throughput",
        "",
        f"Command: `{command}` — {r['n_files']} synthetic DICOM files "
        f"({r['source_image_size']}² → {r['output_image_size']}²), best of {r['repeats']} alternating runs.",
        "",
        "| path | files/s | ratio to bare pydicom |",
        "|---|---:|---:|",
        f"| bare pydicom (`dcmread` + `pixel_array`) | {r['bare_pydicom_files_per_s']:.0f} | 1.00 |",
        f"| medrobust ingest, per item (decode, LUTs, resize, dedupe, labels, pseudonyms), "
        f"{r['workers']} decode workers (`data.workers`) | {r['medrobust_files_per_s']:.0f} | **{r['ratio']:.2f}** |",
        f"| the same in one process (`data.workers: 1`) | {r['medrobust_one_process_files_per_s']:.0f} | "
        f"{r['ratio_one_process']:.2f} |",
        *([f"| medrobust ingest, whole stage (incl. GX validation, Data Docs, shards) | "
           f"{r['stage_files_per_s']:.0f} | {r['stage_files_per_s'] / r['bare_pydicom_files_per_s']:.2f} |"]
          if "stage_files_per_s" in r else []),
        "",
        "Goal: per-item ratio ≥ 0.8.",
        "",
    ])


__all__ = ["bench_ingest", "to_markdown"]
