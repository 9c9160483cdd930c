"""``image_folder``: one sub-folder per class, as torchvision's ``ImageFolder`` reads it.

::

    root/
      normal/a.png  normal/b.jpg ...
      pneumonia/c.png ...

The class of an image is the name of the top-level folder it lies in (images may sit deeper, e.g.
``normal/site1/a.png``); ``classes`` are the sorted folder names, and ``data.classes`` must be a
subset of them. Every file in a class folder is an item and is decoded by the ingest core as a
PNG/JPEG/TIFF/BMP: a file that is not an image is quarantined (``unreadable`` / ``empty_file``),
never skipped silently. Dot-files (and anything under a dot-folder, e.g. ``.ipynb_checkpoints``)
and files directly in ``root`` (they have no class) are skipped and listed in ``ingest.json``.

Groups. A plain folder says nothing about patients. With ``data.image_folder.groups_csv`` (columns
``file,group``; ``file`` relative to ``root``, ``group`` e.g. a patient id), all images of a group
land in one split; an image without a row is quarantined (``missing_patient_id``) and a row whose
image is not there is reported as ``image_missing``. Without it, each image is its own group (its
relative path): say so when reporting results, since two images of one patient can then sit in
train and test.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from medrobust.config import StrictModel
from medrobust.data.sources.base import SOURCES, Item, QuarantineRow, Source, SourceError

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)



class ImageFolderConfig(StrictModel):
    """``data.image_folder``: one sub-folder per class (PNG/JPEG/TIFF/BMP); an optional CSV ``file,group``
    groups images (e.g. by patient)."""

    root: str = ""
    groups_csv: str = ""

def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def read_groups(path: Path) -> dict[str, str]:
    """``file,group`` CSV -> {relative posix path: group}. Raises :class:`SourceError`.

    Backslashes in ``file`` become ``/``; rows without a file or group are ignored (with a warning).

    Args:
        path: the CSV file (UTF-8, a byte-order mark is dropped).

    Returns:
        Relative POSIX path -> group.

    Raises:
        SourceError: the file does not exist, lacks the ``file`` or ``group`` column, or gives one file
            two different groups.
    """
    if not path.is_file():
        raise SourceError(f"groups CSV not found: {path} (set data.image_folder.groups_csv, or leave it empty)")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "file" not in cols or "group" not in cols:
            raise SourceError(
                f"{path}: needs the columns 'file' (path relative to data.image_folder.root) and 'group', found {cols}"
            )
        groups: dict[str, str] = {}
        conflicts: list[str] = []
        empty = 0
        for row in reader:
            file = PurePosixPath((row.get("file") or "").strip().replace("\\", "/")).as_posix()
            group = (row.get("group") or "").strip()
            if not group or file == ".":
                empty += 1
                continue
            if file in groups and groups[file] != group:
                conflicts.append(file)
            groups[file] = group
    if conflicts:
        raise SourceError(
            f"{path}: {len(conflicts)} files are given two different groups, e.g. {conflicts[:3]}; "
            "keep one row per file"
        )
    if empty:
        log.warning("%s: %d rows without a file or group were ignored", path, empty)
    return groups


@SOURCES.register("image_folder", dicom="none")
class ImageFolderSource(Source):
    """Images in ``<root>/<class>/...`` (``data.image_folder``).

    Args:
        data: the ``data`` section; ``data.image_folder`` is used.
        root: overrides ``data.image_folder.root``.
        groups_csv: overrides ``data.image_folder.groups_csv``.

    Attributes:
        classes: the class folders' names, sorted.
        groups: relative path -> group from the groups CSV, or None without one.
        files: (class, path) of every file in a class folder, sorted by path.
        skipped: relative paths of dot-files and of files directly in ``root``.

    Raises:
        SourceError: the root is not set or not a folder, it holds no class folder, the class folders hold
            no file, or the groups CSV cannot be used (:func:`read_groups`).
    """

    name = "image_folder"

    def __init__(self, data: DataConfig, root: str | Path | None = None, groups_csv: str | Path | None = None,
                 **_: Any) -> None:
        cfg = data.image_folder
        if not str(root or cfg.root):
            raise SourceError("data.image_folder.root is empty; set it to a folder with one sub-folder per class")
        self.root = Path(root or cfg.root)
        if not self.root.is_dir():
            raise SourceError(f"image folder not found: {self.root} (set data.image_folder.root in params.yaml)")
        groups_path = str(groups_csv or cfg.groups_csv)
        self.groups: dict[str, str] | None = read_groups(Path(groups_path)) if groups_path else None
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise SourceError(
                f"no class folders in {self.root}: put each class's images in a sub-folder named after the class "
                "(set data.image_folder.root)"
            )
        self.classes = tuple(d.name for d in class_dirs)
        self.files: list[tuple[str, Path]] = []  # (class, path)
        self.skipped: list[str] = []
        for p in sorted(self.root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(self.root)
            if _hidden(rel) or len(rel.parts) == 1:
                self.skipped.append(rel.as_posix())
            else:
                self.files.append((rel.parts[0], p))
        if not self.files:
            raise SourceError(f"the class folders under {self.root} hold no files (set data.image_folder.root)")
        loose = [s for s in self.skipped if "/" not in s and not s.startswith(".")]
        if loose:
            log.warning("%d files directly in %s have no class folder and are skipped (ingest.json: skipped_files)",
                        len(loose), self.root)
        log.info("image_folder %s: %d files in %d classes %s%s", self.root, len(self.files), len(self.classes),
                 list(self.classes), "" if self.groups is not None else "; no groups_csv: each image is its own group")

    def items(self) -> Iterator[Item]:
        """One ``image`` item per file, labelled by its class folder, grouped by the groups CSV (or itself)."""
        for cls, path in self.files:
            rel = path.relative_to(self.root).as_posix()
            group = rel if self.groups is None else self.groups.get(rel)
            yield Item(ref=rel, kind="image", read=path.read_bytes, label=cls, group=group, uid=rel)

    def leftovers(self) -> list[QuarantineRow]:
        """Groups-CSV rows naming a file that is not in a class folder (``image_missing``)."""
        if self.groups is None:
            return []
        present = {path.relative_to(self.root).as_posix() for _, path in self.files}
        return [
            QuarantineRow(ref=f"groups:{f}", reason="image_missing",
                          message="a row of data.image_folder.groups_csv names a file that is not in a class folder")
            for f in sorted(set(self.groups) - present)
        ]


__all__ = ["ImageFolderSource", "read_groups"]
