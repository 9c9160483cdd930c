"""Stage 0 — synthesize: write the embedded default dataset (a synthetic DICOM study tree).

Only used when ``data.source`` is ``synthetic``; ingest then reads the tree through the same code
path as a real DICOM folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medrobust.params import Params
from medrobust.data.synthetic import generate_tree
from medrobust.utils import atomic_output_dir

log = logging.getLogger(__name__)


def run(params: Params, out_dir: str | Path) -> dict[str, int]:
    """Write the synthetic DICOM tree ``out_dir/dicom/...`` and ``out_dir/labels.csv`` (``data.synthetic``).

    Args:
        params: validated params.
        out_dir: the stage's output folder (replaced atomically on success).

    Returns:
        Counts: ``patients``, ``images``, ``lesions``.
    """
    with atomic_output_dir(out_dir) as tmp:
        counts = generate_tree(tmp, params.data.synthetic)
    return counts
