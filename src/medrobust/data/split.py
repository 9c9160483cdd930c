"""Patient-level train/val/test split: all images of a patient land in exactly one split."""

from __future__ import annotations

import numpy as np

from pydantic import Field, model_validator

from medrobust.config import StrictModel


class SplitConfig(StrictModel):
    """``data.split``: the fractions of patients per split (no patient is in two splits)."""

    train: float = Field(0.6, ge=0.0, le=1.0)
    val: float = Field(0.2, ge=0.0, le=1.0)
    test: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


def split_patients(patients: list[str], cfg: SplitConfig, seed: int) -> dict[str, str]:
    """Assign each patient (its source ID, in memory only) to ``train``, ``val`` or ``test``.

    The order is a seeded permutation of the sorted patient list, so the assignment depends on the
    seed and the set of patients only, not on file order. Each non-empty fraction gets at least one
    patient when there are enough patients (at least 3).

    Args:
        patients: source patient IDs, one per image or already unique (duplicates are merged).
        cfg: ``data.split``, the fractions of patients per split.
        seed: the permutation's seed (params.yaml's ``seed``).

    Returns:
        Mapping patient -> split name.
    """
    unique = sorted(set(patients))
    n = len(unique)
    order = np.random.default_rng(seed).permutation(n)
    fracs = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    counts = {k: int(round(v * n)) for k, v in fracs.items()}
    for k in ("val", "test"):
        if fracs[k] > 0 and counts[k] == 0 and n >= 3:
            counts[k] = 1
    counts["train"] = n - counts["val"] - counts["test"]
    out: dict[str, str] = {}
    pos = 0
    for name in ("train", "val", "test"):
        for idx in order[pos : pos + counts[name]]:
            out[unique[idx]] = name
        pos += counts[name]
    return out
