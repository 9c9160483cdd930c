"""One malformed item never stops an ingest: each is quarantined with a specific reason (issue 14, item 1).

Every case from the issue's "Why" that reaches the decoder — a RescaleSlope of DS 'abc', a WindowCenter
'center', PALETTE COLOR without its lookup table, a VOI LUT shorter than its descriptor claims, PNGs that
declare 30000² and 9400² pixels in a few hundred bytes — sits in one folder with good files. The ingest
completes, keeps every good file, and lists each bad one with its reason.
"""

from __future__ import annotations

import copy
import csv
import struct
import warnings
import zlib

import pandas as pd
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from medrobust.data.synthetic import generate_tree
from medrobust.stages import ingest
from tests.support.refs import read_quarantine
from tests.conftest import tiny_params


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element written byte for byte (pydicom refuses to build a DS of 'abc' itself)."""
    value += b" " * (len(value) % 2)
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _short_voi_lut(ds: Dataset) -> None:
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", bytes(20))  # 10 entries where the descriptor claims 4096
    ds.VOILUTSequence = Sequence([item])


BAD_DICOM = {
    "slope_abc.dcm": lambda ds: _raw(ds, 0x00281053, "DS", b"abc"),
    "window_center_text.dcm": lambda ds: _raw(ds, 0x00281050, "DS", b"center"),
    "palette_without_lut.dcm": lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"),
    "short_voi_lut.dcm": _short_voi_lut,
}


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width x height`` grey pixels, with a few hundred bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(width + 1) * 4)) + \
        chunk(b"IEND", b"")


def test_a_folder_of_malformed_items_and_good_files_ingests_every_good_file(tmp_path):
    params = tiny_params(validation={"max_quarantine_fraction": 0.5})
    generate_tree(tmp_path / "src", params.data.synthetic)
    dicom, labels_csv = tmp_path / "src" / "dicom", tmp_path / "src" / "labels.csv"
    good = sorted(dicom.rglob("*.dcm"))
    template = pydicom.dcmread(good[0])
    bad = dicom / "bad"
    bad.mkdir()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, mutate in BAD_DICOM.items():
            ds = copy.deepcopy(template)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            mutate(ds)
            ds.save_as(bad / name, enforce_file_format=True)
            rows.append((ds.SOPInstanceUID, "lesion"))
    with open(labels_csv, "a", newline="") as fh:
        csv.writer(fh).writerows(rows)
    (bad / "bomb_30000.png").write_bytes(_png_declaring(30000, 30000))
    (bad / "bomb_9400.png").write_bytes(_png_declaring(9400, 9400))
    assert len((bad / "bomb_9400.png").read_bytes()) < 50_000

    result = ingest.run(params, tmp_path / "out", dicom, labels_csv)  # completes: no exception
    q = read_quarantine(tmp_path / "out" / "quarantine.csv", dicom)
    got = dict(zip(q["file"], q["reason"], strict=True))
    assert {k: v for k, v in got.items() if k.startswith("bad/")} == {
        "bad/slope_abc.dcm": "decode_failed", "bad/window_center_text.dcm": "decode_failed",
        "bad/palette_without_lut.dcm": "bad_lookup_table", "bad/short_voi_lut.dcm": "bad_lookup_table",
        "bad/bomb_30000.png": "too_large", "bad/bomb_9400.png": "too_large"}
    messages = dict(zip(q["file"], q["message"], strict=True))
    assert "ValueError" in messages["bad/slope_abc.dcm"] and "'abc'" in messages["bad/slope_abc.dcm"]
    assert "9400 x 9400" in messages["bad/bomb_9400.png"]
    assert "10 entries" in messages["bad/short_voi_lut.dcm"] and "4096" in messages["bad/short_voi_lut.dcm"]
    assert "Red palette" in messages["bad/palette_without_lut.dcm"]
    assert result.n_images == len(good)  # every good file kept
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == len(good)
