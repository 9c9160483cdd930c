"""The data the benchmarks run on: the built-in synthetic dataset, ingested once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from medrobust.params import Params
from medrobust.stages import ingest, synthesize


def default_dataset(params: Params, dataset_dir: Path | None = None) -> Path:
    """The ingested built-in dataset: ``dataset_dir`` when it holds one, else synthesised and ingested
    into a temporary folder (``data.synthetic``, ``data.image_size`` of ``params``).

    Args:
        params: the configuration the synthesize and ingest stages run with.
        dataset_dir: an ingest output folder (used when it holds ``manifest.csv``), or None.

    Returns:
        The ingest stage's output folder.
    """
    if dataset_dir is not None and (dataset_dir / "manifest.csv").exists():
        return dataset_dir
    tmp = Path(tempfile.mkdtemp(prefix="medrobust-bench-"))
    synthesize.run(params, tmp / "raw")
    ingest.run(params, tmp / "ingested", raw_dir=tmp / "raw")
    return tmp / "ingested"


__all__ = ["default_dataset"]
