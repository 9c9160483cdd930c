"""``ham10000``: the HAM10000 dermatoscopy images plus ``HAM10000_metadata.csv``.

Layout (Harvard Dataverse / ISIC / Kaggle)::

    images_dir/HAM10000_images_part_1/ISIC_0024306.jpg ...
    images_dir/HAM10000_images_part_2/ISIC_0029306.jpg ...
    HAM10000_metadata.csv   lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]

Images are ``<image_id>.jpg`` anywhere under ``images_dir``. The label is ``dx``, one of the seven
diagnostic categories ``akiec, bcc, bkl, df, mel, nv, vasc`` (also the dermamnist class names).
HAM10000 has several images of one lesion (different magnifications or days): the group is the
``lesion_id``, so all images of a lesion land in one split and no lesion is seen in training and in
testing. ``dx_type`` (histo / follow_up / consensus / confocal: how the diagnosis was confirmed) is
kept in the manifest; ``age``, ``sex`` and ``localization`` are never read into anything.

Quarantine: an image without a metadata row -> ``missing_label``; a row naming one image with two
different dx or lesion ids -> ``conflicting_labels``; a metadata row whose image is not found ->
``image_missing`` (its ref is the ISIC image id, a public dataset id, not a person's). Kaggle's copy
holds every image twice (``HAM10000_images_part_1`` and ``ham10000_images_part_1``): byte-identical
copies of an image id are skipped and listed in ``ingest.json``; differing files with the same id
are both delivered and the core quarantines the later one (``duplicate_sop_uid``). Files other than
``.jpg``/``.jpeg`` under ``images_dir`` (CSV exports, dot-files) are skipped and listed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrobust.config import StrictModel
from medrobust.data.sources.base import SOURCES, Item, QuarantineRow, Rejected, Source, SourceError

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)

DX_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
REQUIRED = ("lesion_id", "image_id", "dx")
SUFFIXES = {".jpg", ".jpeg"}


class HamConfig(StrictModel):
    """``data.ham10000``: image folder(s) plus ``HAM10000_metadata.csv``; splits are grouped by lesion_id."""

    images_dir: str = ""
    metadata_csv: str = ""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@SOURCES.register("ham10000", dicom="none")
class Ham10000Source(Source):
    """HAM10000 images labelled by ``dx`` and grouped by ``lesion_id`` (``data.ham10000``).

    Args:
        data: the ``data`` section; ``data.ham10000`` is used.
        images_dir: overrides ``data.ham10000.images_dir``.
        metadata_csv: overrides ``data.ham10000.metadata_csv``.

    Raises:
        SourceError: a setting is empty, the image folder or metadata CSV does not exist, the CSV lacks
            ``lesion_id``, ``image_id`` or ``dx``, or there is no ``.jpg``/``.jpeg`` image.
    """

    name = "ham10000"
    classes = DX_CLASSES

    def __init__(self, data: DataConfig, images_dir: str | Path | None = None, metadata_csv: str | Path | None = None,
                 **_: Any) -> None:
        cfg = data.ham10000
        if not str(images_dir or cfg.images_dir) or not str(metadata_csv or cfg.metadata_csv):
            raise SourceError("data.ham10000.images_dir and data.ham10000.metadata_csv must both be set")
        self.root = Path(images_dir or cfg.images_dir)
        self.metadata = Path(metadata_csv or cfg.metadata_csv)
        if not self.root.is_dir():
            raise SourceError(f"HAM10000 image folder not found: {self.root} (set data.ham10000.images_dir)")
        self.rows: dict[str, tuple[str, str, str]] = {}  # image_id -> (lesion_id, dx, dx_type)
        self.conflicts: dict[str, str] = {}
        self._read_metadata()
        self.files, self.skipped = self._list_images()
        if not self.files:
            raise SourceError(f"no .jpg images under {self.root} (set data.ham10000.images_dir)")
        self.found = {image_id for image_id, _ in self.files}
        log.info("ham10000: %d images, %d metadata rows", len(self.files), len(self.rows))

    def _read_metadata(self) -> None:
        if not self.metadata.is_file():
            raise SourceError(f"HAM10000 metadata CSV not found: {self.metadata} (set data.ham10000.metadata_csv)")
        with self.metadata.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in cols]
            if missing:
                raise SourceError(
                    f"{self.metadata}: missing columns {missing}; found {cols}. Expected HAM10000_metadata.csv "
                    "(lesion_id,image_id,dx,dx_type,age,sex,localization); check data.ham10000.metadata_csv"
                )
            for row in reader:  # only the columns below are read; age/sex/localization are left alone
                image_id = (row.get("image_id") or "").strip()
                if not image_id:
                    continue
                entry = ((row.get("lesion_id") or "").strip(), (row.get("dx") or "").strip().lower(),
                         (row.get("dx_type") or "").strip())
                old = self.rows.get(image_id)
                if old is not None and old[:2] != entry[:2]:
                    self.conflicts[image_id] = (
                        f"{self.metadata.name} lists this image twice with different dx/lesion_id "
                        f"({old[1]!r} vs {entry[1]!r})"
                    )
                self.rows[image_id] = entry

    def _list_images(self) -> tuple[list[tuple[str, Path]], list[str]]:
        by_id: dict[str, list[Path]] = defaultdict(list)
        skipped: list[str] = []
        for p in sorted(self.root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in SUFFIXES:
                skipped.append(rel.as_posix())
            else:
                by_id[p.stem].append(p)
        files: list[tuple[str, Path]] = []
        for image_id, paths in sorted(by_id.items()):
            files.append((image_id, paths[0]))
            if len(paths) > 1:
                first = _digest(paths[0])
                for other in paths[1:]:
                    if _digest(other) == first:
                        skipped.append(f"{other.relative_to(self.root).as_posix()} (copy of "
                                       f"{paths[0].relative_to(self.root).as_posix()})")
                    else:
                        files.append((image_id, other))
        return files, skipped

    def items(self) -> Iterator[Item]:
        """One ``image`` item per image file, labelled by ``dx``, grouped by ``lesion_id``."""
        for image_id, path in self.files:
            row = self.rows.get(image_id)
            # without a row the image is rejected in label(); its id stands in as the group until then
            group = row[0] if row else image_id
            extra = {"dx_type": row[2]} if row and row[2] else {}
            yield Item(ref=path.relative_to(self.root).as_posix(), kind="image", read=path.read_bytes,
                       label=row[1] if row else None, group=group, uid=image_id, extra=extra)

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The image's ``dx``; ``conflicting_labels`` / ``missing_label`` as in the module docstring."""
        image_id = item.uid or ""
        if image_id in self.conflicts:
            raise Rejected("conflicting_labels", self.conflicts[image_id])
        if image_id not in self.rows:
            raise Rejected("missing_label", f"no row for {image_id} in {self.metadata.name}")
        if not item.label:
            raise Rejected("missing_label", f"the row for {image_id} in {self.metadata.name} has an empty dx")
        return item.label

    def leftovers(self) -> list[QuarantineRow]:
        """Metadata rows whose image was not found (``image_missing``, ref ``metadata:<image_id>``)."""
        return [
            QuarantineRow(ref=f"metadata:{image_id}", reason="image_missing",
                          message=f"{self.metadata.name} lists {image_id} but no {image_id}.jpg is under "
                                  "data.ham10000.images_dir")
            for image_id in sorted(set(self.rows) - self.found)
        ]


__all__ = ["DX_CLASSES", "Ham10000Source"]
