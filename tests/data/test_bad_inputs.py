"""The bad-input corpus: one case per kind of broken input, each quarantined with its own reason.

One folder holds a valid tiny synthetic study tree plus every bad kind below; it is ingested once
in-process and once through the decode worker pool, and both runs must agree. Each case is then
checked on its own: the item is in ``quarantine.csv`` with the expected reason and a message that
says what is wrong, and nothing is lost (every file is ingested, quarantined, or listed as skipped).
"""

from __future__ import annotations

import copy
import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from medrobust.data.sources import REASONS
from medrobust.data.synthetic import generate_tree
from medrobust.data import pool
from medrobust.stages import ingest
from tests.support.refs import read_quarantine, unmask_skipped
from tests.conftest import tiny_params

#: ref -> (reason, a word the message must contain)
CASES: dict[str, tuple[str, str]] = {}


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _corpus(root: Path) -> tuple[Path, Path]:
    params = tiny_params()
    generate_tree(root, params.data.synthetic)
    dicom, labels_csv = root / "dicom", root / "labels.csv"
    bad = dicom / "bad"
    bad.mkdir()
    good = sorted(dicom.rglob("*.dcm"))
    template = pydicom.dcmread(good[0])
    rows: list[dict[str, str]] = []

    def case(name: str, reason: str, word: str) -> Path:
        # zz_* files sit at the top, sorted after the good study folders they duplicate
        folder = dicom if name.startswith("zz_") else bad
        CASES[str((folder / name).relative_to(dicom))] = (reason, word)
        return folder / name

    def save(ds: pydicom.Dataset, name: str, reason: str, word: str, label: str | None = "lesion",
             new_uid: bool = True) -> Path:
        ds = copy.deepcopy(ds)
        if new_uid:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if label is not None and ds.get("SOPInstanceUID"):
            rows.append({"SOPInstanceUID": ds.SOPInstanceUID, "label": label})
        path = case(name, reason, word)
        ds.save_as(path, enforce_file_format=True)
        return path

    def variant(**attrs: object) -> pydicom.Dataset:
        ds = copy.deepcopy(template)
        for k, v in attrs.items():
            setattr(ds, k, v)
        return ds

    # --- reading the file -------------------------------------------------------------------
    p = save(template, "truncated.dcm", "truncated", "cut off")
    p.write_bytes(p.read_bytes()[:-500])
    p = save(template, "bad_preamble.dcm", "not_dicom", "DICOM", label=None)  # unreadable: no UID to match
    raw = bytearray(p.read_bytes())
    raw[128:132] = b"DICX"  # the magic after the 128-byte preamble is wrong
    p.write_bytes(bytes(raw[:132]) + b"\x00" * 64)
    case("empty.dcm", "empty_file", "zero bytes").write_bytes(b"")
    case("scan.dcm", "not_dicom", "DICOM").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    # --- what the object holds --------------------------------------------------------------
    sr = copy.deepcopy(template)
    for kw in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
               "PhotometricInterpretation", "PixelRepresentation"):
        if kw in sr:
            delattr(sr, kw)
    sr.Modality = "SR"
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    save(sr, "report_sr.dcm", "no_pixel_data", "PixelData")
    mpeg = variant(PixelData=encapsulate([b"\x00" * 256]))
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no decoder here
    save(mpeg, "mpeg2.dcm", "unsupported_transfer_syntax", "1.2.840.10008.1.2.4.100")
    save(variant(NumberOfFrames=3, PixelData=template.PixelData * 3), "volume.dcm", "multiframe", "frames")
    save(variant(Rows=0, PixelData=b""), "zero_size.dcm", "empty_image", "no image")
    save(variant(Rows=4, Columns=4, PixelData=np.zeros((4, 4), np.uint16).tobytes()), "tiny.dcm",
         "unsupported_dimensions", "8x8")
    save(variant(PixelData=template.PixelData[:1000]), "corrupt.dcm", "corrupt_pixel_data", "bytes")
    hsv = variant(PhotometricInterpretation="HSV", SamplesPerPixel=3, PlanarConfiguration=0,
                  PixelData=template.PixelData * 3)
    save(hsv, "hsv.dcm", "unsupported_photometric", "HSV")
    nan = variant(RescaleSlope="NaN")
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in nan:
            delattr(nan, kw)
    save(nan, "nan_rescale.dcm", "invalid_values", "non-finite")
    flat = variant(PixelData=np.full((template.Rows, template.Columns), 7, np.uint16).tobytes())
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in flat:
            delattr(flat, kw)
    save(flat, "constant.dcm", "invalid_values", "constant")
    save(variant(WindowCenter=100, WindowWidth=0.5, VOILUTFunction="LINEAR"), "bad_window.dcm",
         "invalid_values", "WindowWidth")
    save(variant(PatientID=""), "no_patient.dcm", "missing_patient_id", "PatientID")
    no_uid = variant()
    del no_uid.SOPInstanceUID
    save(no_uid, "no_sop_uid.dcm", "missing_instance_uid", "SOPInstanceUID", new_uid=False)
    # --- labels and identity ----------------------------------------------------------------
    save(template, "unlabelled.dcm", "missing_label", "labels.csv", label=None)
    save(template, "maybe.dcm", "label_not_allowed", "maybe", label="maybe")
    save(template, "empty_label.dcm", "missing_label", "empty label", label="")
    p = save(template, "conflict.dcm", "conflicting_labels", "conflicting")
    rows.append({"SOPInstanceUID": pydicom.dcmread(p).SOPInstanceUID, "label": "normal"})
    same_uid = variant(InstanceNumber=999)  # different bytes, the SOPInstanceUID of good[0]
    save(same_uid, "zz_same_uid.dcm", "duplicate_sop_uid", "SOPInstanceUID", label=None, new_uid=False)
    shutil.copy(good[0], case("zz_copy.dcm", "duplicate_image", "byte-identical"))
    ghost = generate_uid()
    rows.append({"SOPInstanceUID": ghost, "label": "normal"})  # a CSV row without an image
    # --- plain images in a DICOM folder (keyed by file, grouped by patient_id) ----------------
    rng = np.random.default_rng(0)
    case("photo.png", "unreadable", "Pillow").write_bytes(b"<html>an error page saved as .png</html>")
    rows.append({"file": "bad/photo.png", "label": "normal", "patient_id": "P-photo"})
    case("no_group.png", "missing_patient_id", "patient_id").write_bytes(
        _png(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
    rows.append({"file": "bad/no_group.png", "label": "normal"})
    # a good PNG, to show plain images do get in
    (bad / "ok.png").write_bytes(_png(rng.integers(0, 255, (40, 30), dtype=np.uint8)))
    rows.append({"file": "bad/ok.png", "label": "normal", "patient_id": "P-ok"})

    existing = list(csv.DictReader(labels_csv.read_text().splitlines()))
    with open(labels_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["SOPInstanceUID", "file", "label", "patient_id"])
        w.writeheader()
        for r in existing + rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})
    CASES["labels:ghost"] = ("image_missing", "not in the source")
    return dicom, labels_csv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("corpus")
    dicom, labels_csv = _corpus(root / "src")
    (dicom / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    params = tiny_params(data={"source": "dicom_folder"}, validation={"max_quarantine_fraction": 0.6})
    params = params.updated({"data": {"workers": 1}})
    ingest.run(params, root / "one", dicom, labels_csv)
    pooled = params.updated({"data": {"workers": 2}})
    old = pool.POOL_MIN_ITEMS
    pool.POOL_MIN_ITEMS = 8  # the tiny corpus goes through the worker pool too
    try:
        ingest.run(pooled, root / "pool", dicom, labels_csv)
    finally:
        pool.POOL_MIN_ITEMS = old
    q = read_quarantine(root / "one" / "quarantine.csv", dicom, keep_default_na=False)
    return {"root": root, "dicom": dicom, "q": q, "params": params}


def test_corpus_has_at_least_twenty_kinds(corpus):
    kinds = {reason for reason, _ in CASES.values()}
    assert len(CASES) >= 25 and len(kinds) >= 20, (len(CASES), sorted(kinds))
    assert kinds <= set(REASONS)


@pytest.mark.parametrize("ref", [
    "bad/truncated.dcm", "bad/bad_preamble.dcm", "bad/empty.dcm", "bad/scan.dcm", "bad/report_sr.dcm",
    "bad/mpeg2.dcm", "bad/volume.dcm", "bad/zero_size.dcm", "bad/tiny.dcm", "bad/corrupt.dcm", "bad/hsv.dcm",
    "bad/nan_rescale.dcm", "bad/constant.dcm", "bad/bad_window.dcm", "bad/no_patient.dcm",
    "bad/no_sop_uid.dcm", "bad/unlabelled.dcm", "bad/maybe.dcm", "bad/empty_label.dcm", "bad/conflict.dcm",
    "zz_same_uid.dcm", "zz_copy.dcm", "bad/photo.png", "bad/no_group.png", "labels:ghost",
])
def test_each_bad_kind_is_quarantined_with_its_reason(corpus, ref):
    q = corpus["q"]
    reason, word = CASES[ref]
    if ref == "labels:ghost":  # the row's UID is pseudonymised: found by reason
        rows = q[q["reason"] == "image_missing"]
        assert len(rows) == 1 and rows.iloc[0]["file"].startswith("labels:ima-")
        got = rows.iloc[0]
    else:
        rows = q[q["file"] == ref]
        assert len(rows) == 1, f"{ref} not quarantined exactly once: {rows.to_dict('records')}"
        got = rows.iloc[0]
    assert got["reason"] == reason, got["message"]
    assert word.lower() in got["message"].lower(), got["message"]


def test_nothing_is_lost_and_the_pool_agrees(corpus):
    root, dicom, q = corpus["root"], corpus["dicom"], corpus["q"]
    manifest = pd.read_csv(root / "one" / "manifest.csv")
    summary = pd.read_json(root / "one" / "ingest.json", typ="series")
    files = [p for p in dicom.rglob("*") if p.is_file()]
    file_rows = q[~q["file"].str.startswith("labels:")]
    assert len(manifest) + len(file_rows) + len(summary["skipped_files"]) == len(files)
    assert unmask_skipped(summary["skipped_files"], dicom) == [".DS_Store"]
    # operator files name items by keyed hash only: no raw path, folder or file name
    for name in ("quarantine.csv", "ingest.json", "manifest.csv"):
        text = (root / "one" / name).read_text()
        assert not any(n in text for n in ("bad/", "zz_copy", "zz_same_uid", ".DS_Store", "photo.png")), name
    assert (manifest["photometric"].fillna("") == "").sum() == 1  # bad/ok.png made it in
    # the worker pool gives the same dataset, byte for byte
    for name in ("manifest.csv", "quarantine.csv"):
        assert (root / "one" / name).read_text() == (root / "pool" / name).read_text(), name
    for shard in sorted((root / "one" / "shards").glob("*.npy")):
        np.testing.assert_array_equal(np.load(shard), np.load(root / "pool" / "shards" / shard.name))
    # the quarantine records the hash of each bad file so it can be found without a path
    assert file_rows["source_sha256"].str.len().eq(64).all()


def test_split_and_order_do_not_depend_on_the_pseudonymisation_key(tmp_path, monkeypatch):
    """Same params, another key: other pseudonyms, but the same split and the same shards."""
    params = tiny_params()
    generate_tree(tmp_path / "src", params.data.synthetic)
    outs = {}
    for name, key in (("a", "first-key-0123456789abcdef"), ("b", "second-key-0123456789abcdef")):
        monkeypatch.setenv("MEDROBUST_PSEUDONYM_KEY", key)
        ingest.run(params, tmp_path / name, tmp_path / "src" / "dicom", tmp_path / "src" / "labels.csv")
        outs[name] = pd.read_csv(tmp_path / name / "manifest.csv")
    a, b = outs["a"], outs["b"]
    assert not set(a["image_id"]) & set(b["image_id"])  # the key matters for the pseudonyms...
    for col in ("split", "label", "source_sha256", "shard", "shard_index"):
        assert a[col].tolist() == b[col].tolist(), col  # ...and for nothing else
    for shard in sorted((tmp_path / "a" / "shards").glob("*.npy")):
        np.testing.assert_array_equal(np.load(shard), np.load(tmp_path / "b" / "shards" / shard.name))
