"""``cmmd``: the Chinese Mammography Database (TCIA CMMD): a DICOM tree plus its clinical table.

Layout (as the NBIA Data Retriever writes it)::

    dicom_dir/CMMD/D1-0001/<study>/<series>/1-1.dcm, 1-2.dcm ...
    CMMD_clinicaldata_revision.xlsx   ID1, LeftRight, Age, number, abnormality, classification, subtype

The clinical table has one row per breast: ``ID1`` is the PatientID, ``LeftRight`` the side (L/R),
``classification`` Benign or Malignant. An image's label is the row of (its header's PatientID,
its ImageLaterality (0020,0062), or Laterality (0020,0060) when that is absent), lower-cased:
``benign`` / ``malignant``. Images are grouped by PatientID (done by the ingest core from the
header), so both breasts of a woman land in one split. ``Age`` and the other columns are not read.

The table may be the ``.xlsx`` TCIA publishes (read with pandas + openpyxl) or a CSV export.
Only ``*.dcm`` files are items; other files in the tree (``metadata.csv``, licences, dot-files,
DICOMDIR) are skipped and listed in ``ingest.json``.

Quarantine: no laterality in the header, or no row for (patient, side) -> ``missing_label``; the same
(patient, side) listed twice with different classifications -> ``conflicting_labels``; a row none
of whose images was ingested -> ``image_missing``, referred to by its spreadsheet row number (the
ID1 value is a PatientID and is never written to quarantine.csv or the logs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medrobust.config import StrictModel
from medrobust.data.sources.base import SOURCES, Item, QuarantineRow, Rejected, Source, SourceError
from medrobust.data.sources.folder import SKIP_NAMES

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)

REQUIRED = ("ID1", "LeftRight", "classification")


class CmmdConfig(StrictModel):
    """``data.cmmd``: the CMMD (TCIA) DICOM tree plus the clinical table (CSV or XLSX: ID1, LeftRight,
    classification)."""

    dicom_dir: str = ""
    clinical_table: str = ""


def read_table(path: Path) -> pd.DataFrame:
    """The clinical table (``.xlsx``/``.xls`` or CSV) as strings; raises :class:`SourceError`.

    Args:
        path: the table; ``.xlsx``, ``.xlsm`` and ``.xls`` are read as spreadsheets, anything else as CSV.

    Returns:
        The table, every column as strings (no text, such as ``NA``, is turned into NaN).

    Raises:
        SourceError: the file does not exist or cannot be read (e.g. openpyxl is missing).
    """
    if not path.is_file():
        raise SourceError(f"CMMD clinical table not found: {path} (set data.cmmd.clinical_table)")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, dtype=str, keep_default_na=False)
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, OSError, ImportError) as exc:
        raise SourceError(
            f"cannot read the CMMD clinical table {path} ({type(exc).__name__}: {exc}); "
            "use CMMD_clinicaldata_revision.xlsx or a CSV export of it (data.cmmd.clinical_table)"
        ) from None


@SOURCES.register("cmmd", dicom="all", sided=True)
class CmmdSource(Source):
    """CMMD mammograms labelled per breast from the clinical table (``data.cmmd``).

    Args:
        data: the ``data`` section; ``data.cmmd`` is used.
        dicom_dir: overrides ``data.cmmd.dicom_dir``.
        clinical_table: overrides ``data.cmmd.clinical_table``.

    Raises:
        SourceError: a setting is empty, the DICOM folder does not exist, the clinical table cannot be read
            or lacks ``ID1``, ``LeftRight`` or ``classification``, or there is no ``.dcm`` file.
    """

    name = "cmmd"
    classes = ("benign", "malignant")

    def __init__(self, data: DataConfig, dicom_dir: str | Path | None = None, clinical_table: str | Path | None = None,
                 **_: Any) -> None:
        cfg = data.cmmd
        if not str(dicom_dir or cfg.dicom_dir) or not str(clinical_table or cfg.clinical_table):
            raise SourceError("data.cmmd.dicom_dir and data.cmmd.clinical_table must both be set")
        self.root = Path(dicom_dir or cfg.dicom_dir)
        if not self.root.is_dir():
            raise SourceError(f"CMMD DICOM folder not found: {self.root} (set data.cmmd.dicom_dir)")
        self.table_path = Path(clinical_table or cfg.clinical_table)
        self.labels: dict[tuple[str, str], str] = {}
        self.row_of: dict[tuple[str, str], int] = {}  # spreadsheet row number (header = row 1)
        self.conflicts: set[tuple[str, str]] = set()
        self.used: set[tuple[str, str]] = set()
        self._read(read_table(self.table_path))
        self.files: list[Path] = []
        self.skipped: list[str] = []
        for p in sorted(self.root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(self.root)
            if any(s.startswith(".") for s in rel.parts) or p.name in SKIP_NAMES or p.suffix.lower() != ".dcm":
                self.skipped.append(rel.as_posix())
            else:
                self.files.append(p)
        if not self.files:
            raise SourceError(f"no .dcm files under {self.root} (set data.cmmd.dicom_dir to the CMMD folder)")
        log.info("cmmd: %d DICOM files, %d (patient, side) rows in %s", len(self.files), len(self.labels),
                 self.table_path.name)

    def _read(self, df: pd.DataFrame) -> None:
        by_lower = {str(c).strip().lower(): c for c in df.columns}
        missing = [c for c in REQUIRED if c.lower() not in by_lower]
        if missing:
            raise SourceError(
                f"{self.table_path}: missing columns {missing}; found {[str(c) for c in df.columns]}. Expected the "
                "CMMD clinical table (ID1, LeftRight, Age, number, abnormality, classification, subtype); "
                "check data.cmmd.clinical_table"
            )
        ids, sides, classes = (df[by_lower[c.lower()]] for c in REQUIRED)
        for n, (pid, side, cls) in enumerate(zip(ids, sides, classes, strict=True), start=2):
            pid, side, cls = str(pid).strip(), str(side).strip().upper(), str(cls).strip().lower()
            if not pid:
                continue
            key = (pid, side)
            if key in self.labels and self.labels[key] != cls:
                self.conflicts.add(key)
            self.labels.setdefault(key, cls)
            self.row_of.setdefault(key, n)

    def items(self) -> Iterator[Item]:
        """One ``dicom`` item per ``.dcm`` file, in path order."""
        for path in self.files:
            yield Item(ref=path.relative_to(self.root).as_posix(), kind="dicom", read=path.read_bytes)

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The classification of (PatientID, laterality); ``missing_label`` / ``conflicting_labels`` otherwise."""
        pid = header.get("PatientID", "").strip()
        side = (header.get("ImageLaterality") or header.get("Laterality") or "").strip().upper()
        if not side:
            raise Rejected("missing_label", "no ImageLaterality (0020,0062) or Laterality (0020,0060) in the header: "
                                            "the CMMD clinical table is per breast")
        key = (pid, side)
        self.used.add(key)
        if key in self.conflicts:
            raise Rejected("conflicting_labels", f"{self.table_path.name} gives this patient's {side} breast two "
                                                 f"different classifications (row {self.row_of[key]} and another)")
        if key not in self.labels:
            raise Rejected("missing_label", f"no row for this patient's {side} breast in {self.table_path.name}")
        if not self.labels[key]:
            raise Rejected("missing_label", f"row {self.row_of[key]} of {self.table_path.name} has an empty "
                                            "classification")
        return self.labels[key]

    def leftovers(self) -> list[QuarantineRow]:
        """Table rows none of whose images was labelled (``image_missing``), referred to by row number."""
        return [
            QuarantineRow(ref=f"clinical:{self.table_path.name}:row {self.row_of[k]}", reason="image_missing",
                          message="no image of this patient and side was labelled (not in data.cmmd.dicom_dir, "
                                  "or all its files were quarantined before the lookup)")
            for k in sorted(set(self.labels) - self.used, key=lambda k: self.row_of[k])
        ]


__all__ = ["CmmdSource", "read_table"]
