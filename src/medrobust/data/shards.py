"""Array shards + manifest: the on-disk dataset format shared by ingest, advgen and training.

A dataset folder holds ``manifest.csv`` (one row per image) and ``shards/<split>-NNNN.npy``, each a
float32 array of shape (N, 1, H, W) with values in [0, 1]. Shards are plain ``.npy`` read with
``allow_pickle=False``: loading a dataset can never execute code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medrobust.utils.io import read_csv

SPLITS = ("train", "val", "test")


@dataclass
class ArraySplit:
    """One split in memory: images (N, 1, H, W) float32 in [0, 1] and integer labels (N,).

    Attributes:
        x: the images, float32, (N, 1, H, W).
        y: the label indices, int64, (N,).
        manifest: the split's manifest rows, in the order of ``x`` and ``y``.
    """

    x: torch.Tensor
    y: torch.Tensor
    manifest: pd.DataFrame

    def __len__(self) -> int:
        return int(self.y.shape[0])


def write_shards(
    out_dir: Path, split: str, images: list[np.ndarray], shard_size: int, prefix: str | None = None
) -> list[tuple[str, int]]:
    """Write ``images`` of one split into shards; returns (shard file, index) per image.

    Args:
        out_dir: the dataset folder; shards go to ``out_dir/shards/``.
        split: the split name, the shard files' prefix unless ``prefix`` is given.
        images: (H, W) or (1, H, W) arrays of one shape, in manifest order.
        shard_size: images per shard file.
        prefix: the shard files' name prefix instead of ``split``.

    Returns:
        (shard path relative to ``out_dir``, index in that shard) per image, in order; empty for no images.
    """
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    refs: list[tuple[str, int]] = []
    name = prefix or split
    for k, start in enumerate(range(0, len(images), shard_size)):
        chunk = np.stack(images[start : start + shard_size]).astype(np.float32)
        if chunk.ndim == 3:
            chunk = chunk[:, None]
        rel = f"shards/{name}-{k:04d}.npy"
        np.save(out_dir / rel, chunk, allow_pickle=False)
        refs.extend((rel, i) for i in range(len(chunk)))
    return refs


def load_split(dataset_dir: str | Path, split: str, manifest_name: str = "manifest.csv") -> ArraySplit:
    """Load one split of a dataset folder written by ingest (or advgen) into tensors.

    Args:
        dataset_dir: the dataset folder (manifest plus ``shards/``).
        split: ``train``, ``val`` or ``test``.
        manifest_name: the manifest's file name in ``dataset_dir``.

    Returns:
        The split's images, labels and manifest rows.

    Raises:
        ValueError: the manifest has no row for ``split``.
        FileNotFoundError: the manifest or a shard it names does not exist.
    """
    dataset_dir = Path(dataset_dir)
    manifest = read_csv(dataset_dir / manifest_name)
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{dataset_dir}: split {split!r} is empty")
    return ArraySplit(*load_rows(dataset_dir, rows), manifest=rows)


def load_rows(dataset_dir: Path, rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels for manifest ``rows`` (columns ``shard``, ``shard_index``, ``label_index``).

    Each shard is read once (``allow_pickle=False``), however many rows refer to it.

    Args:
        dataset_dir: the dataset folder the ``shard`` paths are relative to.
        rows: manifest rows, at least one.

    Returns:
        (images float32 (N, 1, H, W), label indices int64 (N,)), in row order.

    Raises:
        FileNotFoundError: a shard file does not exist.
    """
    cache: dict[str, np.ndarray] = {}
    out = []
    for shard, idx in zip(rows["shard"], rows["shard_index"], strict=True):
        if shard not in cache:
            cache[shard] = np.load(dataset_dir / shard, allow_pickle=False)
        out.append(cache[shard][int(idx)])
    x = torch.from_numpy(np.stack(out).astype(np.float32))
    y = torch.tensor(rows["label_index"].to_numpy(copy=True), dtype=torch.long)
    return x, y
