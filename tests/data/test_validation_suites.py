"""Per-source Great Expectations suites on the ingest manifest, and the Data Docs ingest writes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from medrobust.data.validation import ValidationConfig
from medrobust.data.validation import validate_manifest
from medrobust.data.manifest import BASE_COLUMNS
from medrobust.stages import ingest, synthesize
from tests.conftest import tiny_params

CLASSES = ("normal", "lesion")
CFG = ValidationConfig(min_class_fraction=0.05, max_class_fraction=0.95, min_images_per_split=2)
SIZE = 32


def _manifest(kind: str, n_patients: int = 12, per_patient: int = 2) -> pd.DataFrame:
    """A manifest built the way ingest builds it: BASE_COLUMNS, header facts as strings, "" when absent.

    ``kind``: ``dicom`` (MR headers), ``array`` (MedMNIST-like: no header facts) or ``moons``
    (two_moons feature vectors: height 1, width 2).
    """
    splits = ["train", "train", "val", "test"]
    rows = []
    for p in range(n_patients):
        for i in range(per_patient):
            n = len(rows)
            label = CLASSES[n % 2]
            rows.append({
                "image_id": hashlib.sha256(f"img{n}".encode()).hexdigest()[:32],
                "patient_id": hashlib.sha256(f"pat{p}".encode()).hexdigest()[:32],
                "split": splits[p % 4], "label": label, "label_index": CLASSES.index(label),
                "height": 1 if kind == "moons" else SIZE, "width": 2 if kind == "moons" else SIZE,
                "pixel_min": 0.0, "pixel_max": 1.0, "shard": f"{splits[p % 4]}-0000.npy", "shard_index": n,
                "source_sha256": hashlib.sha256(f"raw{n}".encode()).hexdigest(),
                **({"modality": "MR", "photometric": "MONOCHROME2" if n % 3 else "MONOCHROME1",
                    "bits_stored": "12", "source_rows": "64", "source_columns": "48"} if kind == "dicom" else {}),
            })
    manifest = pd.DataFrame.from_records(rows)
    for col in BASE_COLUMNS:  # as ingest does: a fact no image has is an empty column
        if col not in manifest.columns:
            manifest[col] = ""
    return manifest[BASE_COLUMNS]


def _failed(report) -> set[tuple[str, str | None]]:
    return {(c["expectation"], c["column"]) for c in report.failures}


def _ran(report) -> set[tuple[str, str | None]]:
    return {(c["expectation"], c["column"]) for c in report.checks if not c.get("skipped")}


NOT_NULL, IN_SET, BETWEEN = ("expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set",
                             "expect_column_values_to_be_between")


@pytest.mark.parametrize("source", ["synthetic", "dicom_folder", "pacs", "cmmd"])
def test_good_dicom_manifest_passes_with_the_dicom_rules(source):
    report = validate_manifest(_manifest("dicom"), CLASSES, CFG, source=source, image_size=SIZE)
    assert report.success, report.to_markdown()
    assert {(IN_SET, "photometric"), (NOT_NULL, "modality"), (BETWEEN, "source_rows"),
            (BETWEEN, "source_columns"), (IN_SET, "height"), (IN_SET, "width")} <= _ran(report)
    assert {c["table"] for c in report.checks} == {"images", "patients", "class_balance"}
    assert f"({source})" in report.to_markdown().splitlines()[0]


@pytest.mark.parametrize(
    ("source", "column", "value", "expected"),
    [
        ("synthetic", "photometric", "YBR_XYZ", {(IN_SET, "photometric")}),
        ("synthetic", "modality", "", {(NOT_NULL, "modality")}),
        ("synthetic", "height", SIZE - 1, {(IN_SET, "height")}),
        ("dicom_folder", "source_rows", "4", {(BETWEEN, "source_rows")}),
        ("dicom_folder", "source_columns", "abc", {(BETWEEN, "source_columns")}),  # not a number
        ("dicom_folder", "modality", "", {(NOT_NULL, "modality")}),  # a DICOM row: it has other facts
        ("dicom_folder", "photometric", "", {(NOT_NULL, "photometric")}),
        ("pacs", "photometric", "YBR_XYZ", {(IN_SET, "photometric")}),
    ],
)
def test_a_bad_dicom_fact_fails_its_own_expectation_only(source, column, value, expected):
    manifest = _manifest("dicom")
    manifest.loc[3, column] = value
    report = validate_manifest(manifest, CLASSES, CFG, source=source, image_size=SIZE)
    assert not report.success
    assert _failed(report) == expected, report.to_markdown()
    bad = next(c for c in report.failures if c["column"] == column)
    assert bad["table"] == "images" and bad["details"].startswith("1 unexpected")
    if value not in ("", "abc"):
        assert str(value) in bad["details"]


def test_non_dicom_rows_are_exempt_in_mixed_sources_but_not_in_dicom_only_ones():
    manifest = _manifest("dicom")
    for col in ("modality", "photometric", "bits_stored", "source_rows", "source_columns"):
        manifest.loc[5, col] = ""  # a PNG in the folder: no header facts at all
    mixed = validate_manifest(manifest, CLASSES, CFG, source="dicom_folder", image_size=SIZE)
    assert mixed.success, mixed.to_markdown()
    dicom_only = validate_manifest(manifest, CLASSES, CFG, source="synthetic", image_size=SIZE)
    assert (IN_SET, "is_dicom") in _failed(dicom_only)
    assert (NOT_NULL, "modality") in _failed(dicom_only)


def test_manifest_read_back_from_csv_validates_the_same(tmp_path):
    manifest = _manifest("dicom")
    manifest.loc[3, "source_rows"] = "4"
    manifest.to_csv(tmp_path / "m.csv", index=False)
    report = validate_manifest(pd.read_csv(tmp_path / "m.csv"), CLASSES, CFG, source="synthetic", image_size=SIZE)
    assert _failed(report) == {(BETWEEN, "source_rows")}


def test_array_source_checks_the_image_size_and_ignores_dicom_facts():
    manifest = _manifest("array")
    report = validate_manifest(manifest, CLASSES, CFG, source="medmnist", image_size=SIZE)
    assert report.success, report.to_markdown()
    assert (IN_SET, "width") in _ran(report)
    assert not {c for c in _ran(report) if c[1] in ("modality", "photometric", "source_rows")}
    manifest.loc[7, "width"] = 28  # not resized to data.image_size
    bad = validate_manifest(manifest, CLASSES, CFG, source="medmnist", image_size=SIZE)
    assert _failed(bad) == {(IN_SET, "width")}
    assert "28" in bad.failures[0]["details"]


def test_two_moons_rows_are_feature_vectors():
    manifest = _manifest("moons")
    assert validate_manifest(manifest, CLASSES, CFG, source="two_moons", image_size=SIZE).success
    manifest.loc[0, "width"] = 3
    assert _failed(validate_manifest(manifest, CLASSES, CFG, source="two_moons", image_size=SIZE)) == {
        (IN_SET, "width")}


def test_absent_columns_and_unknown_size_are_skipped_and_recorded():
    report = validate_manifest(_manifest("dicom"), CLASSES, CFG, source="cmmd", image_size=None)
    assert report.success
    skipped = {(c["expectation"], c["column"]) for c in report.skipped}
    assert skipped == {(IN_SET, "laterality"), (IN_SET, "height"), (IN_SET, "width")}
    assert all(c["success"] and c["details"].startswith("skipped:") for c in report.skipped)
    assert "| skipped |" in report.to_markdown()
    assert "'laterality' column" in next(c for c in report.skipped if c["column"] == "laterality")["details"]


def test_cmmd_laterality_must_be_left_or_right():
    manifest = _manifest("dicom")
    manifest["laterality"] = ["L", "R"] * (len(manifest) // 2)
    assert validate_manifest(manifest, CLASSES, CFG, source="cmmd", image_size=SIZE).success
    manifest.loc[2, "laterality"] = "B"
    report = validate_manifest(manifest, CLASSES, CFG, source="cmmd", image_size=SIZE)
    assert _failed(report) == {(IN_SET, "laterality")}


def test_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="unknown source 'dicom'.*dicom_folder"):
        validate_manifest(_manifest("dicom"), CLASSES, CFG, source="dicom")


# --------------------------------------------------------------------------------------------------
# Data Docs written by the ingest stage
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    synthesize.run(tiny_params(), raw)
    return raw


def _identifiers(raw: Path) -> set[str]:
    """PatientID and PatientName values of the raw headers."""
    out = set()
    for path in raw.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out |= {str(ds.PatientID), str(ds.PatientName)}
    return out


def _status(page: str) -> str:
    """The overall status a Data Docs validation page shows."""
    match = re.search(r"Status:</span>\s*<i[^>]*></i>\s*(\w+)", page)
    assert match, "no Status line in the validation page"
    return match.group(1)


def _docs_text(docs: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in docs.rglob("*") if p.suffix in (".html", ".json"))


def test_ingest_writes_data_docs_without_identifiers(tmp_path, raw_tree):
    # tiny_params() has data.source: synthetic, so the synthetic suites (every row DICOM) run
    out = tmp_path / "out"
    ingest.run(tiny_params(), out, raw_tree / "dicom", raw_tree / "labels.csv")
    docs = out / "data_docs"
    index = (docs / "index.html").read_text()
    for table in ("images", "patients", "class_balance"):
        assert f"medrobust_synthetic_{table}" in index
        pages = list((docs / "validations" / f"medrobust_synthetic_{table}").rglob("*.html"))
        assert len(pages) == 1
        assert _status(pages[0].read_text()) == "Succeeded"
    assert (docs / "static").is_dir()
    text = _docs_text(docs)
    identifiers = _identifiers(raw_tree)
    assert len(identifiers) > 10
    assert not [i for i in identifiers if i in text]


def test_failed_ingest_keeps_the_data_docs_in_the_rejected_folder(tmp_path, raw_tree):
    params = tiny_params(validation={"min_class_fraction": 0.49, "max_class_fraction": 0.51})
    with pytest.raises(ingest.IngestValidationError):
        ingest.run(params, tmp_path / "out", raw_tree / "dicom", raw_tree / "labels.csv")
    docs = tmp_path / "out.rejected" / "data_docs"
    page = next((docs / "validations" / "medrobust_synthetic_class_balance").rglob("*.html")).read_text()
    assert _status(page) == "Failed"
    assert (docs / "index.html").is_file()
