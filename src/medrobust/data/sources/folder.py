"""``dicom_folder`` (and ``synthetic``): a folder tree of DICOM files plus a labels CSV.

The labels CSV has a ``label`` column and, per row, either ``SOPInstanceUID`` (DICOM files) or
``file`` (a PNG/JPEG path relative to the folder; then ``patient_id`` gives its group). Files are
recognised by content: anything that is not a PNG/JPEG/TIFF/BMP by extension is read as DICOM, so
a DICOM file without the ``.dcm`` suffix (common in PACS exports) is not skipped, and a stray
non-DICOM file is quarantined as ``not_dicom`` rather than ignored. DICOMDIR indexes and dot-files
are skipped and listed in ``ingest.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medrobust.data.sources.base import Item, LabelTable, QuarantineRow, Rejected, Source, SourceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SKIP_NAMES = {"DICOMDIR"}


def kind_of(name: str) -> str:
    """``image`` for PNG/JPEG/TIFF/BMP names, else ``dicom``."""
    return "image" if Path(name).suffix.lower() in IMAGE_SUFFIXES else "dicom"


def list_files(root: Path) -> tuple[list[Path], list[str]]:
    """(candidate image files, skipped index/hidden files), sorted."""
    files, skipped = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            if p.name in SKIP_NAMES or p.name.startswith("."):
                skipped.append(str(p.relative_to(root)))
            else:
                files.append(p)
    return files, skipped


class LabelledSource(Source):
    """A source whose labels come from a :class:`LabelTable` keyed by SOPInstanceUID or file."""

    table: LabelTable

    def label(self, item: Item, header: dict[str, str]) -> str:
        if item.kind == "dicom":
            return self.table.lookup(header.get("SOPInstanceUID", ""))
        return self.table.lookup(item.ref)

    def saw(self, item: Item, uid: str | None) -> None:
        self.table.used.add(item.ref if item.kind != "dicom" else (uid or ""))

    def group_of(self, ref: str) -> str | None:
        return self.table.groups.get(ref)

    def leftovers(self) -> list[QuarantineRow]:
        from medrobust.data.deid import load_key, pseudonym

        key = load_key()
        return self.table.unused(lambda k: pseudonym(key, "image", k))


class DicomFolderSource(LabelledSource):
    name = "dicom_folder"

    def __init__(self, params: Any, dicom_dir: str | Path | None = None, labels_csv: str | Path | None = None,
                 **_: Any) -> None:
        cfg = params.data
        self.name = cfg.source if cfg.source in ("synthetic", "dicom_folder") else "dicom_folder"
        self.root = Path(dicom_dir or cfg.dicom_dir)
        if not self.root.is_dir():
            raise SourceError(f"DICOM folder not found: {self.root} (set data.dicom_dir in params.yaml)")
        self.table = LabelTable.from_path(labels_csv or cfg.labels_csv)
        self.files, self.skipped = list_files(self.root)
        if not self.files:
            raise SourceError(f"no files under {self.root} (set data.dicom_dir in params.yaml)")

    def items(self) -> Iterator[Item]:
        for path in self.files:
            rel = path.relative_to(self.root).as_posix()
            kind = kind_of(rel)
            yield Item(ref=rel, kind=kind, read=path.read_bytes,  # type: ignore[arg-type]
                       group=self.group_of(rel) if kind == "image" else None,
                       uid=rel if kind == "image" else None)


__all__ = ["DicomFolderSource", "LabelledSource", "Rejected", "kind_of", "list_files"]
