"""The ingest manifest: one row per image, ordered and split the same way on every machine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medrobust.data.shards import SPLITS, write_shards
from medrobust.data.split import SplitConfig, split_patients

QUARANTINE_COLUMNS = ["file", "reason", "message", "source_sha256"]
BASE_COLUMNS = [
    "image_id", "patient_id", "split", "label", "label_index", "height", "width",
    "pixel_min", "pixel_max", "shard", "shard_index", "source_sha256",
    "modality", "photometric", "bits_stored", "source_rows", "source_columns",
]
#: in-memory columns of a record, dropped before anything is written
INTERNAL_COLUMNS = ["source_split", "_order", "_group"]


def build_manifest(records: list[dict[str, Any]], split: SplitConfig, seed: int,
                   use_source_splits: bool = True) -> tuple[pd.DataFrame, str]:
    """The manifest of the kept records, and how it was split.

    Records are ordered by their source id (SOPInstanceUID or the source's own id) and split by source
    patient id, both held in memory only, so the same params give the same split and metrics
    whatever the pseudonymisation key. A source's official splits are kept when every record has one
    and ``use_source_splits`` is set.

    Args:
        records: the rows :class:`~medrobust.data.items.IngestState` gathered.
        split: ``data.split``.
        seed: params.yaml's ``seed``.
        use_source_splits: ``data.use_source_splits``.

    Returns:
        (manifest without shard references yet, a note saying how it was split).
    """
    manifest = pd.DataFrame.from_records(records)
    if manifest.empty:
        manifest = pd.DataFrame(columns=[*BASE_COLUMNS, *INTERNAL_COLUMNS])
    manifest = manifest.sort_values("_order", kind="stable").reset_index(drop=True)
    official = manifest["source_split"].isin(SPLITS)
    if use_source_splits and len(manifest) and bool(official.all()):
        manifest["split"] = manifest["source_split"]
        note = "the source's official splits"
    else:
        assignment = split_patients(manifest["_group"].tolist(), split, seed)
        manifest["split"] = manifest["_group"].map(assignment)
        note = "patient-level split from data.split"
    manifest = manifest.drop(columns=INTERNAL_COLUMNS)
    for col in BASE_COLUMNS:
        if col not in manifest.columns:
            manifest[col] = ""
    return manifest, note


def write_manifest_shards(out_dir: Any, manifest: pd.DataFrame, images: dict[str, np.ndarray],
                          shard_size: int) -> pd.DataFrame:
    """Write each split's images as shards under ``out_dir`` and fill the manifest's shard columns.

    Args:
        out_dir: the dataset folder, a :class:`~pathlib.Path` (shards go to ``out_dir/shards/<split>-NNNN.npy``).
        manifest: the manifest from :func:`build_manifest`; its ``shard`` / ``shard_index`` columns are set
            in place.
        images: ``image_id`` -> pixels, for every manifest row.
        shard_size: images per shard file (``data.shard_size``).

    Returns:
        The manifest with ``shard`` / ``shard_index`` set and its columns in order (base, then the rest sorted).
    """
    manifest["shard"], manifest["shard_index"] = "", -1
    for split in SPLITS:
        idx = np.flatnonzero(manifest["split"].to_numpy() == split)
        refs = write_shards(out_dir, split, [images[manifest.at[i, "image_id"]] for i in idx], shard_size)
        manifest.loc[idx, "shard"] = [r[0] for r in refs]
        manifest.loc[idx, "shard_index"] = [r[1] for r in refs]
    extra = sorted(c for c in manifest.columns if c not in BASE_COLUMNS)
    return manifest[[*BASE_COLUMNS, *extra]]


__all__ = ["BASE_COLUMNS", "INTERNAL_COLUMNS", "QUARANTINE_COLUMNS", "build_manifest", "write_manifest_shards"]
