"""``medmnist``: one MedMNIST (v2 / MedMNIST+) ``.npz`` file, with its official train/val/test splits.

The file is the one the ``medmnist`` package downloads: ``<flag>.npz`` (28 px) or
``<flag>_<size>.npz`` (64, 128, 224 px), holding ``train_images, val_images, test_images,
train_labels, val_labels, test_labels``. Images are uint8 (N, H, W) grey or (N, H, W, 3) colour
(DermaMNIST, which ingest turns into BT.601 luma); labels are integers (N, 1), or (N, 14) 0/1 for
ChestMNIST. ``data.medmnist.flag`` may be left empty: it is then read from the file name, and so is
the size, which must equal the images' side.

Label names are MedMNIST v2's ``INFO`` (``medmnist/info.py``), in its index order:

* ``pneumoniamnist``: 0 normal, 1 pneumonia;
* ``breastmnist``: 0 "malignant" -> ``malignant``, 1 "normal, benign" -> ``normal_benign``
  (MedMNIST merged the source's normal and benign classes; the comma is dropped from the name);
* ``dermamnist``: HAM10000's dx codes ``akiec`` (actinic keratoses and intraepithelial carcinoma),
  ``bcc`` (basal cell carcinoma), ``bkl`` (benign keratosis-like lesions), ``df``
  (dermatofibroma), ``mel`` (melanoma), ``nv`` (melanocytic nevi), ``vasc`` (vascular lesions) —
  the same names as the ``ham10000`` source;
* ``organamnist``: bladder, femur-left, femur-right, heart, kidney-left, kidney-right, liver,
  lung-left, lung-right, pancreas, spleen;
* ``chestmnist`` (multi-label, 14 findings): atelectasis, cardiomegaly, effusion, infiltration,
  mass, nodule, pneumonia, pneumothorax, consolidation, edema, emphysema, fibrosis, pleural, hernia.
  ``data.medmnist.multilabel: any`` gives the classes (``normal``, ``finding``), ``finding`` being
  any of the 14; ``multilabel: <finding>`` gives (``absent``, ``present``) for that one finding.
  The whole vector is kept in the manifest column ``labels_multi`` as a 14-character "0101..."
  string (read the manifest with ``dtype=str`` to keep its leading zeros).

MedMNIST has no patient ids, so each image is its own group (``<split>-<index>``); the official
splits are kept (``data.use_source_splits``), which is how MedMNIST's benchmarks are reported.
ChestMNIST (NIH ChestX-ray14) uses NIH's patient-wise official split; for the other sets, whether
one patient's images can sit in two splits is decided by MedMNIST, not by this source.

Errors. A problem with the file as a whole raises :class:`SourceError` before anything is written:
not an ``.npz``, missing keys (the message lists the keys found and expected), an array holding
Python objects (never unpickled: the file is read with ``allow_pickle=False``), image and label
counts that differ within a split (then no label can be trusted to belong to its image), a label or
image shape that is not MedMNIST's, a side that differs from the size in the file name. A single
label value outside the dataset's range (e.g. 7 in PneumoniaMNIST, or 2 in a ChestMNIST 0/1 vector)
quarantines that one image as ``bad_label_value``.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.config import StrictModel
from medrobust.data.sources.base import SOURCES, Item, Rejected, Source, SourceError

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED_KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
SIZES = (28, 64, 128, 224)

CHEST_FINDINGS: tuple[str, ...] = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
)

#: class names in MedMNIST's label-index order (see the module docstring for the official wording)
LABELS: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_benign"),
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    "organamnist": ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"),
    "chestmnist": CHEST_FINDINGS,
}
MULTILABEL = {"chestmnist"}

_NAME = re.compile(r"^(?P<flag>[a-z0-9]+?)(?:_(?P<size>\d+))?\.npz$")


class MedmnistConfig(StrictModel):
    """``data.medmnist``: a MedMNIST ``.npz`` file as the medmnist package writes it (``<flag>[_<size>].npz``)."""

    path: str = ""
    flag: str = ""         # pneumoniamnist | breastmnist | dermamnist | chestmnist | organamnist; empty: from the file name
    multilabel: str = "any"  # ChestMNIST: any (normal vs finding) or one finding's name (absent vs present)


def parse_name(name: str) -> tuple[str, int] | None:
    """``pneumoniamnist_64.npz`` -> (``pneumoniamnist``, 64); ``chestmnist.npz`` -> (``chestmnist``, 28);
    None when the name is not ``<flag>[_<size>].npz``.

    Args:
        name: a file name (not a path), case-insensitive.

    Returns:
        (flag, image side in pixels; 28 when the name gives no size), or None. The flag is not checked
        against :data:`LABELS`.
    """
    m = _NAME.match(name.lower())
    if m is None:
        return None
    return m["flag"], int(m["size"]) if m["size"] else 28


def _array_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one member of an ``.npz`` without loading its data (224 px files are GBs)."""
    with npz.zip.open(f"{key}.npy") as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:  # rare (.npy 3.0): load it, still without pickle
            arr = npz[key]
            return tuple(arr.shape), arr.dtype
    return tuple(shape), np.dtype(dtype)


@SOURCES.register("medmnist", dicom="none")
class MedmnistSource(Source):
    """Items from one MedMNIST ``.npz`` (``data.medmnist``): arrays, official splits, INFO label names.

    The file's keys, dtypes and shapes are checked from the ``.npy`` headers when the source opens; the
    arrays are read split by split only while :meth:`items` runs.

    Args:
        data: the ``data`` section; ``data.medmnist`` is used.
        path: overrides ``data.medmnist.path``.

    Attributes:
        flag: the dataset's flag.
        size: the image side the file name states, or None when the name does not say it.
        classes: the class names ingest sees (for ChestMNIST, as ``data.medmnist.multilabel`` chooses).
        counts: split -> number of images.

    Raises:
        SourceError: the path is not set or not a file, the flag cannot be told or is not supported or
            disagrees with the file name, ``data.medmnist.multilabel`` is not allowed for the dataset, or
            the file is not a MedMNIST ``.npz`` (see the module docstring's Errors).
    """

    name = "medmnist"

    def __init__(self, data: DataConfig, path: str | Path | None = None, **_: Any) -> None:
        cfg = data.medmnist
        self.path = Path(path or cfg.path)
        if not str(path or cfg.path):
            raise SourceError(
                "data.medmnist.path is empty; set it to a MedMNIST .npz file (e.g. pneumoniamnist_64.npz)"
            )
        if not self.path.is_file():
            raise SourceError(f"MedMNIST file not found: {self.path} (set data.medmnist.path in params.yaml)")
        self.flag, self.size = self._flag_and_size(cfg.flag)
        self.findings = LABELS[self.flag]
        self.multilabel = self.flag in MULTILABEL
        self.finding: str | None = None  # ChestMNIST: one finding (absent/present), or None for any
        if self.multilabel:
            if cfg.multilabel == "any":
                self.classes = ("normal", "finding")
            elif cfg.multilabel in CHEST_FINDINGS:
                self.finding = cfg.multilabel
                self.classes = ("absent", "present")
            else:
                raise SourceError(
                    f"data.medmnist.multilabel {cfg.multilabel!r} is not allowed; "
                    f"use 'any' or one of {list(CHEST_FINDINGS)}"
                )
        else:
            if cfg.multilabel != "any":
                raise SourceError(
                    f"data.medmnist.multilabel applies to chestmnist only; {self.flag} is single-label "
                    f"(set data.medmnist.multilabel to 'any')"
                )
            self.classes = self.findings
        self._bad: dict[str, str] = {}  # uid -> why its label value is out of range
        self.counts = self._check_file()

    def _flag_and_size(self, flag: str) -> tuple[str, int | None]:
        parsed = parse_name(self.path.name)
        name_flag, name_size = parsed if parsed else ("", None)
        flag = flag.strip().lower()
        if not flag:
            if name_flag not in LABELS:
                raise SourceError(
                    f"cannot tell the MedMNIST dataset from the file name {self.path.name!r}; set data.medmnist.flag "
                    f"to one of {sorted(LABELS)} (or keep the medmnist package's name <flag>[_<size>].npz)"
                )
            flag = name_flag
        if flag not in LABELS:
            raise SourceError(f"data.medmnist.flag {flag!r} is not supported; allowed values: {sorted(LABELS)}")
        if name_flag in LABELS and name_flag != flag:
            raise SourceError(
                f"the file name {self.path.name!r} says {name_flag} but data.medmnist.flag is {flag!r}; "
                "fix data.medmnist.flag (or leave it empty to read it from the name)"
            )
        return flag, (name_size if name_flag == flag else None)

    def _open(self) -> Any:
        try:
            npz = np.load(self.path, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise SourceError(
                f"{self.path} is not a readable .npz file ({type(exc).__name__}: {exc}); "
                "set data.medmnist.path to a file written by the medmnist package"
            ) from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise SourceError(f"{self.path} holds a single array, not an .npz archive of MedMNIST splits "
                              "(set data.medmnist.path to the <flag>[_<size>].npz file)")
        return npz

    def _check_file(self) -> dict[str, int]:
        """Keys, dtypes and shapes of every array, from the .npy headers. Returns images per split."""
        with self._open() as npz:
            found = sorted(npz.files)
            missing = [k for k in EXPECTED_KEYS if k not in found]
            if missing:
                raise SourceError(
                    f"{self.path}: not a MedMNIST .npz: missing keys {missing}; found keys {found}, expected "
                    f"{list(EXPECTED_KEYS)} (set data.medmnist.path to a file written by the medmnist package)"
                )
            counts = {}
            for split in SPLITS:
                ishape, idtype = _array_header(npz, f"{split}_images")
                lshape, ldtype = _array_header(npz, f"{split}_labels")
                for key, dtype in ((f"{split}_images", idtype), (f"{split}_labels", ldtype)):
                    if dtype.hasobject:
                        raise SourceError(
                            f"{self.path}: {key} is an object array (pickled Python objects); it is never "
                            "unpickled. Re-create the file with plain numeric arrays (np.savez)"
                        )
                if idtype.kind not in "uf":
                    raise SourceError(f"{self.path}: {split}_images has dtype {idtype}; expected uint8 pixels")
                colour = len(ishape) == 4 and ishape[-1] == 3
                if not (len(ishape) == 3 or colour) or ishape[1] != ishape[2]:
                    raise SourceError(
                        f"{self.path}: {split}_images has shape {ishape}; "
                        "expected (N, S, S) grey or (N, S, S, 3) colour"
                    )
                if self.size is not None and ishape[1] != self.size:
                    raise SourceError(
                        f"{self.path}: images are {ishape[1]}x{ishape[2]} but the file name says {self.size} px; "
                        "the file was renamed or is damaged (fix data.medmnist.path)"
                    )
                width = len(self.findings) if self.multilabel else 1
                if ldtype.kind not in "iub":
                    raise SourceError(f"{self.path}: {split}_labels has dtype {ldtype}; expected integer labels")
                n = ishape[0]
                if lshape not in ({(n, width), (n,)} if width == 1 else {(n, width)}):
                    if not lshape or lshape[0] != n:
                        raise SourceError(
                            f"{self.path}: {split}_images holds {n} images but {split}_labels holds "
                            f"{lshape[0] if lshape else 0} labels; the file is damaged (download it again)"
                        )
                    raise SourceError(f"{self.path}: {split}_labels has shape {lshape}; {self.flag} needs (N, {width})")
                counts[split] = int(ishape[0])
        log.info("medmnist %s (%s px): %s images per split", self.flag, self.size or "?", counts)
        return counts

    def _label(self, uid: str, row: np.ndarray) -> tuple[str | None, dict[str, Any]]:
        """The class name of one label row (None and a note in ``_bad`` when out of range)."""
        values = np.asarray(row).reshape(-1).astype(np.int64)
        if not self.multilabel:
            v = int(values[0])
            if not 0 <= v < len(self.findings):
                self._bad[uid] = f"label value {v}; {self.flag} labels are 0..{len(self.findings) - 1}"
                return None, {}
            return self.findings[v], {}
        if not np.isin(values, (0, 1)).all():
            self._bad[uid] = f"multi-label vector with values {sorted(set(values.tolist()))}; expected 0/1"
            return None, {}
        extra = {"labels_multi": "".join(str(int(v)) for v in values)}
        if self.finding is None:
            return ("finding" if values.any() else "normal"), extra
        return ("present" if values[self.findings.index(self.finding)] else "absent"), extra

    def items(self) -> Iterator[Item]:
        """One ``array`` item per image, split by split, with its official split and label."""
        with self._open() as npz:
            for split in SPLITS:
                images = npz[f"{split}_images"]
                labels = npz[f"{split}_labels"]
                for i in range(len(images)):
                    uid = f"{self.flag}-{split}-{i}"
                    label, extra = self._label(uid, labels[i])
                    yield Item(ref=f"{split}[{i}]", kind="array", array=images[i], label=label,
                               group=f"{split}-{i}", uid=uid, split=split, extra=extra)
                del images, labels

    def label(self, item: Item, header: dict[str, str]) -> str:
        """The item's class name; ``bad_label_value`` when its label value was out of range."""
        if item.uid in self._bad:
            raise Rejected("bad_label_value", self._bad[item.uid or ""])
        return super().label(item, header)


__all__ = ["CHEST_FINDINGS", "LABELS", "MedmnistSource", "parse_name"]
