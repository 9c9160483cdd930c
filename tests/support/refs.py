"""Tests read operator files by raw name: map public references back, as ``quarantine locate`` does.

Ingest names items in quarantine.csv and ingest.json only by :func:`medrobust.data.deid.public_ref`
(a keyed hash of the source path). A test knows the raw paths it wrote; these helpers hash every
candidate with this machine's key and swap each public reference for the raw one it came from, so
assertions stay readable. A reference no candidate explains is kept as it is, so a test still sees
(and fails on) a raw path that leaked.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medrobust.data.deid import load_key, public_ref
from medrobust.utils import read_csv

KIND_PREFIXES = ("", "labels:", "groups:", "metadata:")


def candidates(root: Path | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Every path under ``root`` (relative, POSIX; links and FIFOs too), plus ``extra``."""
    out = list(extra)
    if root is not None:
        out += [p.relative_to(root).as_posix() for p in sorted(Path(root).rglob("*"))]
    return out


def unmasker(root: Path | None = None, extra: Iterable[str] = ()) -> dict[str, str]:
    """{public reference: raw reference} for every candidate, with each kind prefix."""
    key = load_key()
    table: dict[str, str] = {}
    for raw in candidates(root, extra):
        for prefix in KIND_PREFIXES:
            table.setdefault(public_ref(key, prefix + raw), prefix + raw)
    return table


def unmask(refs: Iterable[str], root: Path | None = None, extra: Iterable[str] = ()) -> list[str]:
    """``refs`` with each public reference replaced by the raw one behind it (others unchanged)."""
    table = unmasker(root, extra)
    return [table.get(r, r) for r in refs]


def unmask_skipped(entries: Iterable[str], root: Path | None = None, extra: Iterable[str] = ()) -> list[str]:
    """ingest.json's ``skipped_files`` with their raw paths (``"<path> (<why>)"`` keeps its reason)."""
    table = unmasker(root, extra)
    out = []
    for entry in entries:
        ref, sep, why = entry.partition(" (")
        if why.startswith("copy of "):
            other = why[len("copy of "):-1]
            why = f"copy of {table.get(other, other)})"
        out.append(f"{table.get(ref, ref)}{sep}{why}")
    return out


def read_quarantine(path: Path, root: Path | None = None, extra: Iterable[str] = (), **kwargs) -> pd.DataFrame:
    """quarantine.csv, unescaped (:func:`medrobust.utils.read_csv`), with raw names in ``file``."""
    q = read_csv(path, **kwargs)
    q["file"] = pd.Series(unmask(q["file"].astype(str), root, extra), index=q.index, dtype=object)
    return q
