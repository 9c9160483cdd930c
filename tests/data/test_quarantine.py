"""Bad files are quarantined with a specific reason; nothing is dropped silently."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from medrobust.data.synthetic import generate_tree
from medrobust.stages import ingest
from tests.support.refs import read_quarantine, unmask_skipped
from tests.conftest import tiny_params


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _bad_tree(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A valid tiny tree plus one bad file of each kind; returns (dicom dir, labels csv, expected)."""
    params = tiny_params()
    generate_tree(tmp_path, params.data.synthetic)
    dicom, labels_csv = tmp_path / "dicom", tmp_path / "labels.csv"
    bad = dicom / "bad"
    bad.mkdir()
    good = _files(dicom)
    template = pydicom.dcmread(good[0])
    rows: list[tuple[str, str]] = []
    expected: dict[str, str] = {}

    def save(ds: pydicom.Dataset, name: str, reason: str, label: str | None = "lesion") -> Path:
        ds = copy.deepcopy(ds)
        if "SOPInstanceUID" in ds:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if label is not None:
                rows.append((ds.SOPInstanceUID, label))
        ds.save_as(bad / name, enforce_file_format=True)
        expected[f"bad/{name}"] = reason
        return bad / name

    # 1. truncated: a valid file cut off inside its pixel data
    p = save(template, "truncated.dcm", "truncated")
    p.write_bytes(p.read_bytes()[:-500])
    # 2. non-image DICOM: a basic text structured report, no PixelData
    sr = copy.deepcopy(template)
    for kw in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
               "PhotometricInterpretation", "PixelRepresentation", "WindowCenter", "WindowWidth"):
        delattr(sr, kw)
    sr.Modality = "SR"
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    save(sr, "report_sr.dcm", "no_pixel_data")
    # 3. missing label: a valid image whose SOPInstanceUID is not in the CSV
    save(template, "unlabelled.dcm", "missing_label", label=None)
    # 4. unsupported dimensions: a 3-frame volume
    vol = copy.deepcopy(template)
    vol.NumberOfFrames = 3
    vol.PixelData = template.PixelData * 3
    save(vol, "volume.dcm", "multiframe")
    # 4b. unsupported dimensions: a 4x4 image
    tiny = copy.deepcopy(template)
    tiny.Rows = tiny.Columns = 4
    tiny.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    save(tiny, "tiny.dcm", "unsupported_dimensions")
    # 5. corrupt pixel data: a well-formed element holding too few bytes for Rows x Columns
    corrupt = copy.deepcopy(template)
    corrupt.PixelData = template.PixelData[:1000]
    save(corrupt, "corrupt.dcm", "corrupt_pixel_data")
    # 6. not DICOM at all
    (bad / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    expected["bad/scan.dcm"] = "not_dicom"
    # 7. label outside data.classes
    save(template, "maybe.dcm", "label_not_allowed", label="maybe")
    # 8. duplicate image: a byte copy of a good file (sorted after it)
    shutil.copy(good[0], dicom / "zz_duplicate.dcm")
    expected["zz_duplicate.dcm"] = "duplicate_image"
    # 9. no PatientID
    anon = copy.deepcopy(template)
    anon.PatientID = ""
    save(anon, "no_patient.dcm", "missing_patient_id")
    # 10. a retired colour model (HSV) no decoder maps to grey levels
    hsv = copy.deepcopy(template)
    hsv.PhotometricInterpretation, hsv.SamplesPerPixel, hsv.PlanarConfiguration = "HSV", 3, 0
    hsv.PixelData = template.PixelData * 3
    save(hsv, "colour.dcm", "unsupported_photometric")

    with open(labels_csv, "a", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return dicom, labels_csv, expected


def test_every_bad_file_is_quarantined_with_its_reason(tmp_path):
    dicom, labels_csv, expected = _bad_tree(tmp_path / "src")
    params = tiny_params(validation={"max_quarantine_fraction": 0.5})
    (dicom / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (dicom / "DICOMDIR").write_bytes(b"\0" * 132)
    n_files = len([p for p in dicom.rglob("*") if p.is_file()])
    result = ingest.run(params, tmp_path / "out", dicom, labels_csv)

    q = read_quarantine(tmp_path / "out" / "quarantine.csv", dicom)
    got = dict(zip(q["file"], q["reason"], strict=True))
    assert got == expected, f"unexpected quarantine: {set(got.items()) ^ set(expected.items())}"
    assert q["message"].str.len().min() > 10  # every entry says why
    # nothing silently dropped: every file is either ingested or quarantined
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    summary = pd.read_json(tmp_path / "out" / "ingest.json", typ="series")
    skipped = unmask_skipped(summary["skipped_files"], dicom)
    assert sorted(skipped) == [".DS_Store", "DICOMDIR"]  # not images: listed, not lost
    assert len(manifest) + len(q) + 2 == n_files == result.n_images + result.n_quarantined + 2
    assert summary["quarantine_reasons"]["unsupported_dimensions"] == 1
    assert summary["quarantine_reasons"]["multiframe"] == 1


def test_too_many_bad_files_fail_the_stage_and_keep_previous_outputs(tmp_path):
    dicom, labels_csv, _ = _bad_tree(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("previous run\n")
    params = tiny_params(validation={"max_quarantine_fraction": 0.01})
    with pytest.raises(ingest.IngestValidationError) as err:
        ingest.run(params, out, dicom, labels_csv)
    assert "max_quarantine_fraction" in str(err.value)
    assert (out / "manifest.csv").read_text() == "previous run\n"  # previous outputs intact
    report = err.value.report_dir
    assert (report / "quarantine.csv").exists() and "FAILED" in (report / "validation.md").read_text()
    assert not list(tmp_path.glob("out/.*tmp*")) and not list(tmp_path.glob(".out.tmp-*"))


def test_malformed_labels_csv_is_a_clear_error(tmp_path):
    params = tiny_params()
    generate_tree(tmp_path, params.data.synthetic)
    (tmp_path / "labels.csv").write_text("uid,diagnosis\n1.2.3,normal\n")
    with pytest.raises(ingest.IngestError, match="SOPInstanceUID"):
        ingest.run(params, tmp_path / "out", tmp_path / "dicom", tmp_path / "labels.csv")


def test_quarantine_cells_are_escaped_against_formula_injection(tmp_path):
    """A file named like a formula reaches quarantine.csv neither as a formula (OWASP) nor by its name:
    its cell is a keyed hash that ``quarantine locate`` maps back."""
    params = tiny_params(validation={"max_quarantine_fraction": 0.5})
    generate_tree(tmp_path / "src", params.data.synthetic)
    dicom = tmp_path / "src" / "dicom"
    names = ['=HYPERLINK("evil.example","x").dcm', "+1+2.dcm", "@SUM(A1).dcm", "-2+3.dcm"]
    for name in names:
        (dicom / name).write_bytes(b"not a DICOM file" * 20)
    ingest.run(params, tmp_path / "out", dicom, tmp_path / "src" / "labels.csv")
    raw = list(csv.reader((tmp_path / "out" / "quarantine.csv").open()))
    cells = [cell for row in raw[1:] for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]  # nothing a spreadsheet runs
    assert not [c for c in cells if any(n[:-4] in c for n in names)]
    q = read_quarantine(tmp_path / "out" / "quarantine.csv", dicom)
    assert set(names) <= set(q["file"])


@pytest.mark.parametrize("value", ["=1+1", "+ve", "-ve", "@here", "\tx", "'=already", "'quoted", "''", "plain", "", "a=b"])
def test_write_csv_round_trips_every_text_cell(tmp_path, value):
    from medrobust.utils import read_csv, write_csv

    frame = pd.DataFrame({"text": [value, "x"], "number": [-1.5, 2.0]})
    write_csv(frame, tmp_path / "t.csv")
    back = read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert back["text"].tolist() == [value, "x"] and back["number"].tolist() == [-1.5, 2.0]
    first = next(csv.reader(open(tmp_path / "t.csv")))  # header
    assert first == ["text", "number"]
