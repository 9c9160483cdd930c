"""``dicom_folder`` (and ``synthetic``): a folder tree of DICOM files plus a labels CSV.

The labels CSV has a ``label`` column and, per row, either ``SOPInstanceUID`` (DICOM files) or
``file`` (a PNG/JPEG path relative to the folder; then ``patient_id`` gives its group). Files are
recognised by content: anything that is not a PNG/JPEG/TIFF/BMP by extension is read as DICOM, so
a DICOM file without the ``.dcm`` suffix (common in PACS exports) is not skipped, and a stray
non-DICOM file is quarantined as ``not_dicom`` rather than ignored. DICOMDIR indexes and dot-files
are skipped and listed in ``ingest.json``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrobust.data.deid import load_key, pseudonym
from medrobust.data.sources.base import SOURCES, Item, LabelTable, QuarantineRow, Rejected, Source, SourceError

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SKIP_NAMES = {"DICOMDIR"}


def kind_of(name: str) -> str:
    """``image`` for PNG/JPEG/TIFF/BMP names, else ``dicom``.

    Args:
        name: a file name, path or object key; only its suffix (case-insensitive) counts.

    Returns:
        The :attr:`Item.kind <medrobust.data.sources.base.Item.kind>` to read it as.
    """
    return "image" if Path(name).suffix.lower() in IMAGE_SUFFIXES else "dicom"


def list_files(root: Path, follow_symlinks: bool = False) -> tuple[list[Path], list[str]]:
    """(candidate image files, skipped entries), sorted; nothing under ``root`` is left out unlisted.

    Args:
        root: the folder, searched recursively (symlinked folders are never descended into).
        follow_symlinks: ``data.follow_symlinks``: read a symlinked file when it points inside ``root``.
            A link out of ``root`` is never read (``/etc/passwd`` is not an image to hash).

    Returns:
        The files to deliver as items, and the skipped entries as paths relative to ``root``: index and
        hidden files (DICOMDIR, dot-files) by name; symlinks (not followed, out of the root, dangling),
        FIFOs, sockets and devices as ``"<path> (<why>)"``. None of them is opened.
    """
    files, skipped = [], []
    top = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                skipped.append(f"{(here / name).relative_to(root)} (symlink to a folder: not followed)")
        dirnames.sort()
        for name in sorted(filenames):
            p = here / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                why = None
                if not p.exists():
                    why = "dangling symlink"
                elif not follow_symlinks:
                    why = "symlink: data.follow_symlinks is false"
                elif not p.resolve().is_relative_to(top):
                    why = "symlink out of the source folder: not followed"
                if why:
                    skipped.append(f"{rel} ({why})")
                    continue
            mode = p.stat().st_mode
            if not stat.S_ISREG(mode):
                kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                        else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
                skipped.append(f"{rel} ({kind}: not read)")
            elif p.name in SKIP_NAMES or p.name.startswith("."):
                skipped.append(rel)
            else:
                files.append(p)
    return sorted(files), sorted(skipped)


class LabelledSource(Source):
    """A source whose labels come from a :class:`LabelTable` keyed by SOPInstanceUID or file.

    Subclasses set :attr:`table` in their constructor.

    Attributes:
        table: the labels table; DICOM items are looked up by their header's SOPInstanceUID, other
            items by their ``ref``.
    """

    table: LabelTable

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The table's label for the item's SOPInstanceUID (DICOM) or ``ref`` (plain images)."""
        if item.kind == "dicom":
            return self.table.lookup(header.get("SOPInstanceUID", ""))
        return self.table.lookup(item.ref)

    def saw(self, item: Item, uid: str | None) -> None:
        """Mark the item's table key (``uid`` for DICOM, else ``ref``) as used."""
        self.table.used.add(item.ref if item.kind != "dicom" else (uid or ""))

    def group_of(self, ref: str) -> str | None:
        """The labels table's ``patient_id`` for a plain image.

        Args:
            ref: the image's path/key relative to the source root (its ``file`` column).

        Returns:
            The group, or None when the table gives none for ``ref``.
        """
        return self.table.groups.get(ref)

    def leftovers(self) -> list[QuarantineRow]:
        """The labels-table rows never looked up (``image_missing``); UID keys are pseudonymised."""
        key = load_key()
        return self.table.unused(lambda k: pseudonym(key, "image", k))


@SOURCES.register("dicom_folder", dicom="some")
@SOURCES.register("synthetic", dicom="all", synthesized=True)
class DicomFolderSource(LabelledSource):
    """DICOM files (any name) and PNG/JPEG files under ``data.dicom_dir``; labels from ``data.labels_csv``.

    Registered twice: ``synthetic`` (the embedded tree the ``synthesize`` stage writes, DICOM only)
    and ``dicom_folder``.

    Args:
        data: the ``data`` section.
        dicom_dir: overrides ``data.dicom_dir``.
        labels_csv: overrides ``data.labels_csv``.
        raw_dir: a folder laid out as the synthesize stage writes it (``dicom/`` + ``labels.csv``,
            e.g. a Kubeflow artifact); overrides both settings.

    Raises:
        SourceError: the folder or the labels CSV is missing, or the folder holds no files.
    """

    def __init__(self, data: DataConfig, dicom_dir: str | Path | None = None, labels_csv: str | Path | None = None,
                 raw_dir: str | Path | None = None, **_: Any) -> None:
        if raw_dir is not None:
            dicom_dir, labels_csv = Path(raw_dir) / "dicom", Path(raw_dir) / "labels.csv"
        self.root = Path(dicom_dir or data.dicom_dir)
        if not self.root.is_dir():
            raise SourceError(f"DICOM folder not found: {self.root} (set data.dicom_dir in params.yaml)")
        self.table = LabelTable.from_path(labels_csv or data.labels_csv, encoding=data.labels_encoding)
        self.files, self.skipped = list_files(self.root, data.follow_symlinks)
        if not self.files:
            raise SourceError(f"no files under {self.root} (set data.dicom_dir in params.yaml)")

    def items(self) -> Iterator[Item]:
        """One item per file, in path order; plain images get their group from the labels table."""
        for path in self.files:
            rel = path.relative_to(self.root).as_posix()
            kind = kind_of(rel)
            yield Item(ref=rel, kind=kind, read=path.read_bytes,  # type: ignore[arg-type]
                       group=self.group_of(rel) if kind == "image" else None,
                       uid=rel if kind == "image" else None)


__all__ = ["DicomFolderSource", "LabelledSource", "Rejected", "kind_of", "list_files"]
