"""The PHI audit finds planted identifiers anywhere (text, binary, chunk edges, archives, sqlite), reports
kinds and hashes only, and finds nothing in what ingest writes from real DICOM files."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import shutil
import sqlite3
import warnings
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medrobust.data.audit import (
    collect_identifiers,
    fingerprint,
    is_trivial,
    name_variants,
    scan,
    scan_result,
)
from medrobust.cli import app
from medrobust.stages import ingest
from tests.conftest import tiny_params
from tests.support.phi import assert_no_phi

MRN = "MRN-00451977"
NAME = "Doe^Johanna"
UID = "1.2.826.0.1.3680043.99.12345.67890"
IDS = {"PatientID": {MRN}, "PatientName": {NAME, "Johanna Doe"}, "SOPInstanceUID": {UID}}

#: real pydicom test files that decode (distinct SOP Instance UIDs, 11 patients), plus files that
#: are quarantined: a duplicate SOP Instance UID (MR_small_RLE) and an image without PatientID
IMAGES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
          "examples_overlay.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm",
          "liver_1frame.dcm", "rtdose_1frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm"]
QUARANTINED = ["MR_small_RLE.dcm", "GDCMJ2K_TextGBR.dcm"]


# ------------------------------------------------------------------------------------------------
# (a) the scanner
# ------------------------------------------------------------------------------------------------
def test_finds_an_identifier_in_a_text_file_and_reports_kind_and_hash_not_value(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clean.csv").write_text("image_id,label\nima-0123456789abcdef,normal\n")
    (out / "leak.csv").write_text(f"image_id,label\nx,{MRN}\n")
    result = scan_result([out], IDS, salt="s1")
    assert len(result.findings) == 1 and result.files_scanned == 2
    f = result.findings[0]
    assert (Path(f.file).name, f.offset, f.kind) == ("leak.csv", len("image_id,label\nx,"), "PatientID")
    assert f.fingerprint == fingerprint(MRN, "s1") and len(f.fingerprint) == 12
    assert MRN not in str(f) and MRN not in json.dumps(f.__dict__)


def test_finds_identifiers_in_binary_blobs_and_name_variants(tmp_path):
    blob = bytes(range(256)) * 40 + UID.encode() + b"\x00\xff" * 100 + b"Johanna Doe" + bytes(500)
    (tmp_path / "shard-0000.npy").write_bytes(blob)
    found = scan([tmp_path], IDS)
    assert sorted((f.offset, f.kind) for f in found) == [
        (256 * 40, "SOPInstanceUID"), (256 * 40 + len(UID) + 200, "PatientName")]


def test_finds_an_identifier_split_across_a_chunk_boundary(tmp_path):
    for start in (60, 62, 63, 64):  # the identifier starts before, at and after the 64-byte chunk edge
        path = tmp_path / f"big-{start}.bin"
        path.write_bytes(b"x" * start + MRN.encode() + b"y" * 300)
        found = scan([path], IDS, chunk_size=64)
        assert [(f.offset, f.kind) for f in found] == [(start, "PatientID")], start
    # two occurrences, one on each side of a boundary, are two findings (none counted twice)
    path = tmp_path / "twice.bin"
    path.write_bytes(b"a" * 50 + MRN.encode() + b"b" * 70 + MRN.encode())
    assert [f.offset for f in scan([path], IDS, chunk_size=64)] == [50, 50 + len(MRN) + 70]


def test_finds_identifiers_in_sqlite_databases_and_compressed_archives(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("create table tags (key text, value text)")
    con.executemany("insert into tags values (?, ?)", [("run", "abc")] * 200 + [("patient", MRN)])
    con.commit()
    con.close()
    with zipfile.ZipFile(tmp_path / "model.pt", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04" + UID.encode() * 3)
    with gzip.open(tmp_path / "ingest.log.gz", "wb") as fh:
        fh.write(f"decoded image of {NAME}\n".encode())
    found = scan([tmp_path], IDS)
    where = {(Path(f.file.split("!")[0]).name, f.kind) for f in found}
    assert where == {("mlflow.db", "PatientID"), ("model.pt", "SOPInstanceUID"), ("ingest.log.gz", "PatientName")}
    assert sum(f.kind == "SOPInstanceUID" for f in found) == 3  # inside the deflated member


def test_an_empty_identifier_set_is_an_error_not_a_pass(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no identifiers to search for"):
        scan([tmp_path], {})


def test_names_are_found_whatever_their_case_and_separators(tmp_path):
    """PACS exports name folders after patients (MRN12345_Chen^Mei/, GARCIA_LUCIA_19700101/): issue 14."""
    ids: dict[str, set[str]] = {}
    for name in ("Chen^Mei", "Garcia^Lucia"):
        whole, _ = name_variants(name)
        ids.setdefault("PatientName", set()).update(whole)
    out = tmp_path / "out"
    out.mkdir()
    (out / "quarantine.csv").write_text("file,reason\nMRN12345_CHEN^MEI/img.dcm,not_dicom\n"
                                        "GARCIA_LUCIA_19700101/a.dcm,truncated\nmei-chen/b.dcm,x\nchenmeier.dcm,y\n")
    found = scan([out], ids)
    lines = (out / "quarantine.csv").read_bytes()
    hits = sorted(lines[: f.offset].count(b"\n") for f in found)
    assert hits == [1, 2, 3], hits  # upper case, underscores, given-family with a hyphen; not inside 'chenmeier'


def test_trivial_values_and_name_variants():
    assert is_trivial("ID1") and is_trivial("ANONYMOUS") and is_trivial("anonymized") and is_trivial("0000")
    assert is_trivial("4900") and is_trivial("^^^^") and is_trivial("OB^^^^") and is_trivial("Unknown")
    assert not is_trivial("1CT1") and not is_trivial("99000123") and not is_trivial("Lestrade^G")
    whole, parts = name_variants("Lestrade^Greg^^Dr")
    assert {"Lestrade^Greg^^Dr", "Greg Lestrade", "Lestrade, Greg", "Lestrade Greg Dr"} <= whole
    assert parts == {"Lestrade", "Greg", "Dr"}


def test_collects_identifiers_from_dicom_headers_and_csv_columns(tmp_path):
    for name in ("CT_small.dcm", "examples_overlay.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    (tmp_path / "labels.csv").write_text(f"SOPInstanceUID,label,note\n{ct.SOPInstanceUID},normal,free text\n")
    ids = collect_identifiers([tmp_path])
    assert "1CT1" in ids["PatientID"] and "021234567" in ids["PatientID"]
    assert "ID1" not in ids["PatientID"]  # 3 characters: trivial
    assert {"CompressedSamples^CT1", "CompressedSamples CT1"} <= ids["PatientName"]
    assert "CompressedSamples" in ids["PatientName.component"]
    assert "Moriarty^James" in ids["ReferringPhysicianName"]
    assert {"JFK IMAGING CENTER", "AKH - WIEN"} <= ids["InstitutionName"]
    assert ct.SOPInstanceUID in ids["SOPInstanceUID"] and ct.StudyInstanceUID in ids["StudyInstanceUID"]
    assert ids["csv:SOPInstanceUID"] == {ct.SOPInstanceUID}
    assert ct.SOPClassUID not in {v for vs in ids.values() for v in vs}  # a registered UID identifies nobody
    assert "free text" not in {v for vs in ids.values() for v in vs}


# ------------------------------------------------------------------------------------------------
# (b) end to end: ingest real DICOM files, audit the outputs and the log
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(source folder, labels CSV, ingest output folder, captured DEBUG log file)."""
    root = tmp_path_factory.mktemp("audit_e2e")
    src, labels = root / "src" / "dicom", root / "src" / "labels.csv"
    src.mkdir(parents=True)
    rows = []
    for i, name in enumerate(IMAGES + QUARANTINED):
        shutil.copy(get_testdata_file(name), src / f"img{i:02d}.dcm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uid = pydicom.dcmread(src / f"img{i:02d}.dcm", stop_before_pixels=True).SOPInstanceUID
        rows.append((uid, "lesion" if i % 2 else "normal"))
    rows.append(("1.2.826.0.1.3680043.99.424242.1", "normal"))  # a label row without image
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows([("SOPInstanceUID", "label"), *rows])
    params = tiny_params(data={"source": "dicom_folder"},
                         validation={"min_images_per_split": 1, "min_class_fraction": 0.0,
                                     "max_class_fraction": 1.0, "max_quarantine_fraction": 0.5})
    handler = logging.FileHandler(root / "ingest.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        result = ingest.run(params, root / "out", src, labels)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    # every image is ingested; quarantined: the duplicate UID, the image without PatientID, the orphan label row
    assert (result.n_images, result.n_quarantined) == (len(IMAGES), 3)
    return src.parent, labels, root / "out", root / "ingest.log"


def test_ingest_outputs_and_logs_hold_no_source_identifier(ingested):
    sources, _, out, log_file = ingested
    files = assert_no_phi([sources], [out, log_file], min_identifiers=80)
    assert files >= 8
    assert log_file.stat().st_size > 500  # the log was really captured (DEBUG included)


def test_cli_audit_exit_codes_and_report(ingested, tmp_path):
    sources, _, out, log_file = ingested
    runner = CliRunner()
    report = tmp_path / "clean.json"
    res = runner.invoke(app, ["audit", "--source", str(sources), str(out), str(log_file), "--report", str(report)])
    assert res.exit_code == 0, res.output
    clean = json.loads(report.read_text())
    assert clean["clean"] and clean["findings"] == [] and clean["files_scanned"] >= 8
    assert clean["identifiers_per_kind"]["PatientID"] >= 8

    leaky = tmp_path / "leaky"
    shutil.copytree(out, leaky)
    with open(leaky / "manifest.csv", "a") as fh:
        fh.write("img,1CT1\n")  # CT_small's PatientID
    report = tmp_path / "leak.json"
    res = runner.invoke(app, ["audit", "--source", str(sources), str(leaky), "--report", str(report)])
    assert res.exit_code == 1, res.output
    text = report.read_text()
    found = json.loads(text)
    assert not found["clean"] and [f["kind"] for f in found["findings"]] == ["PatientID"]
    assert found["findings"][0]["file"].endswith("manifest.csv")
    assert "1CT1" not in text and "1CT1" not in res.output  # kinds and hashes only
    assert found["findings"][0]["fingerprint"] == fingerprint("1CT1", found["salt"])


def test_cli_audit_without_identifiers_fails(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("nothing here")
    (tmp_path / "out").mkdir()
    res = CliRunner().invoke(app, ["audit", "--source", str(tmp_path / "src"), str(tmp_path / "out")])
    assert res.exit_code == 2


def test_cli_audit_refuses_to_scan_the_sources_themselves(ingested):
    sources, labels, _, _ = ingested
    res = CliRunner().invoke(app, ["audit", "--source", str(sources), str(labels)])
    assert res.exit_code == 2
