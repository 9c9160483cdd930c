"""Patient-level splits, and the Great Expectations suite that guards them."""

from __future__ import annotations

import pandas as pd
import pytest

from medrobust.data.split import SplitConfig
from medrobust.data.validation import ValidationConfig
from medrobust.data.split import split_patients
from medrobust.data.validation import validate_manifest
from medrobust.stages import ingest
from tests.conftest import tiny_params


def test_split_is_by_patient_deterministic_and_proportional():
    patients = [f"p{i:03d}" for i in range(100) for _ in range(3)]
    cfg = SplitConfig(train=0.6, val=0.2, test=0.2)
    a = split_patients(patients, cfg, seed=1)
    assert a == split_patients(list(reversed(patients)), cfg, seed=1)  # file order does not matter
    assert a != split_patients(patients, cfg, seed=2)
    counts = pd.Series(a).value_counts()
    assert counts.to_dict() == {"train": 60, "val": 20, "test": 20}


def test_no_patient_in_two_splits_after_ingest(pipeline_run):
    manifest = pd.read_csv(pipeline_run.dataset / "manifest.csv")
    splits_per_patient = manifest.groupby("patient_id")["split"].nunique()
    assert splits_per_patient.max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}
    # several images per patient, so this is a real test of grouping
    assert manifest.groupby("patient_id").size().max() >= 2


def _manifest(pipeline_run) -> pd.DataFrame:
    return pd.read_csv(pipeline_run.dataset / "manifest.csv")


def test_validation_passes_on_ingested_manifest(pipeline_run):
    report = validate_manifest(_manifest(pipeline_run), ("normal", "lesion"), pipeline_run.params.validation)
    assert report.success, report.to_markdown()


@pytest.mark.parametrize(
    ("corrupt", "table", "expectation"),
    [
        ("leak", "patients", "expect_column_values_to_be_between"),
        ("label", "images", "expect_column_values_to_be_in_set"),
        ("null", "images", "expect_column_values_to_not_be_null"),
        ("pixel", "images", "expect_column_values_to_be_between"),
        ("balance", "class_balance", "expect_column_values_to_be_between"),
    ],
)
def test_validation_catches_each_problem(pipeline_run, corrupt, table, expectation):
    m = _manifest(pipeline_run)
    cfg = pipeline_run.params.validation
    if corrupt == "leak":  # move one image of a test patient into train
        patient = m.loc[m["split"] == "test", "patient_id"].iloc[0]
        m.loc[m.index[m["patient_id"] == patient][0], "split"] = "train"
    elif corrupt == "label":
        m.loc[0, "label"] = "tumour"
    elif corrupt == "null":
        m.loc[1, "source_sha256"] = None
    elif corrupt == "pixel":
        m.loc[2, "pixel_max"] = 1.5
    elif corrupt == "balance":
        cfg = ValidationConfig(min_class_fraction=0.49, max_class_fraction=0.51)
    report = validate_manifest(m, ("normal", "lesion"), cfg)
    assert not report.success
    failed = {(c["table"], c["expectation"]) for c in report.failures}
    assert (table, expectation) in failed
    assert "FAILED" in report.to_markdown()


def test_failed_validation_stops_ingest_with_readable_report(tmp_path, pipeline_run):
    params = tiny_params(validation={"min_class_fraction": 0.49, "max_class_fraction": 0.51})
    with pytest.raises(ingest.IngestValidationError) as err:
        ingest.run(params, tmp_path / "out", pipeline_run.raw / "dicom", pipeline_run.raw / "labels.csv")
    assert "class_balance" in str(err.value) and "fraction" in str(err.value)
    assert not (tmp_path / "out").exists()
