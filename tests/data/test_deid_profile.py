"""PS3.15 Annex E basic profile on real pydicom test files: no identifier survives, UIDs stay linked."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from medrobust.data.deid import (
    ANNEX_E_BASIC,
    DEIDENTIFICATION_METHOD,
    _uid_pseudonym,
    deidentify_dataset,
    deidentify_facts,
    resolve_action,
)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose's over-long test UID

KEY = b"test-key-0123456789abcdef"
OTHER_KEY = b"another-key-0123456789ab"

#: real files: CT and MR images (private tags), an RT plan and dose (deeply nested sequences),
#: an image with an overlay plane, a structured report (content sequence), a JPEG 2000 NM image
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose_1frame.dcm", "examples_overlay.dcm",
         "test-SR.dcm", "JPEG2000.dcm", "nested_priv_SQ.dcm"]

#: attributes whose values identify a patient, a visit, a person, a place or an instance
IDENTIFYING = {
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientAddress",
    "AccessionNumber", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "InstanceCreationDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
    "RTPlanDate", "RTPlanTime", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "StationName", "DeviceSerialNumber", "StudyDescription", "SeriesDescription", "ProtocolName",
    "VerifyingObserverName", "PersonName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID", "RTPlanName",
}


def _read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some test files carry deliberately odd values
        return pydicom.dcmread(get_testdata_file(name), force=True)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf)
    return buf.getvalue()


def _identifiers(ds: pydicom.Dataset) -> set[str]:
    """Values of identifying attributes anywhere in ``ds`` (long enough not to match by chance)."""
    values: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword not in IDENTIFYING or elem.VR == "SQ" or elem.value in (None, ""):
            continue
        items = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        for v in items:
            s = str(v).strip()
            values.add(s)
            if elem.VR == "PN":
                values.update(p for p in s.split("^") if len(p) >= 4)
    # MR_small's InstitutionName (TOSHIBA) is part of its Manufacturer (TOSHIBA_MEC), which the profile keeps
    kept = " ".join(str(e.value) for e in ds.iterall() if e.keyword == "Manufacturer")
    return {v for v in values if len(v) >= 4 and v not in kept}


@pytest.mark.parametrize("name", FILES)
def test_no_identifier_survives_in_the_written_file(name):
    ds = _read(name)
    needles = _identifiers(ds)
    if "meta" not in name and "nested_priv" not in name:
        assert len(needles) >= 4, f"{name}: the test file should hold identifiers to look for"
    data = _bytes(deidentify_dataset(ds, KEY))
    left = sorted(n for n in needles if n.encode() in data)
    assert not left, f"{name}: identifying values survived de-identification: {left}"
    again = pydicom.dcmread(io.BytesIO(data))  # the file still reads
    assert again.PatientIdentityRemoved == "YES"
    assert again.DeidentificationMethod == DEIDENTIFICATION_METHOD
    code = again.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert again.LongitudinalTemporalInformationModified == "REMOVED"
    # Z attributes are present and empty, X attributes gone
    for kw in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
        assert (kw in again and str(again[kw].value or "") == "") or kw not in ds, kw
    assert "InstitutionName" not in again and "PatientAge" not in again
    # every person name left anywhere is empty or the dummy
    names = {str(e.value) for e in again.iterall() if e.VR == "PN" and e.value not in (None, "")}
    assert names <= {"ANONYMIZED"}, names


@pytest.mark.parametrize("name", FILES)
def test_private_tags_curves_and_overlays_are_removed(name):
    ds = _read(name)
    out = deidentify_dataset(ds, KEY)
    assert not [e.tag for e in out.iterall() if e.tag.is_private]
    assert not [e.tag for e in out.iterall() if 0x5000 <= e.tag.group <= 0x60FF]


def test_the_test_files_really_hold_private_tags_and_an_overlay():
    """The removal test above is not vacuous."""
    assert sum(e.tag.is_private for e in _read("CT_small.dcm").iterall()) > 10
    assert sum(e.tag.is_private for e in _read("nested_priv_SQ.dcm").iterall()) >= 2
    assert any(e.tag.group == 0x6000 for e in _read("examples_overlay.dcm"))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_overlay.dcm"])
def test_pixel_data_is_unchanged(name):
    ds = _read(name)
    out = pydicom.dcmread(io.BytesIO(_bytes(deidentify_dataset(ds, KEY))))
    assert out.PixelData == ds.PixelData
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)


def test_uids_are_replaced_consistently_and_validly():
    ct = _read("CT_small.dcm")
    a, b = deidentify_dataset(ct, KEY), deidentify_dataset(ct, KEY)
    c = deidentify_dataset(ct, OTHER_KEY)
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        new = str(a[kw].value)
        assert new != str(ct[kw].value)
        assert new == str(b[kw].value), f"{kw}: same input and key must give the same UID"
        assert new != str(c[kw].value), f"{kw}: another key must give another UID"
        assert new == _uid_pseudonym(KEY, str(ct[kw].value))
        assert UID(new).is_valid and len(new) <= 64 and new.startswith("2.25.")
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == ct.SOPClassUID  # a registered SOP class is not an identifier
    assert len({a.SOPInstanceUID, a.StudyInstanceUID, a.SeriesInstanceUID}) == 3


def test_references_between_instances_stay_linked():
    plan, dose = _read("rtplan.dcm"), _read("rtdose_1frame.dcm")
    dose = copy.deepcopy(dose)
    dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plan.SOPInstanceUID
    dose.StudyInstanceUID = plan.StudyInstanceUID
    p, d = deidentify_dataset(plan, KEY), deidentify_dataset(dose, KEY)
    assert d.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == p.SOPInstanceUID != plan.SOPInstanceUID
    assert d.StudyInstanceUID == p.StudyInstanceUID != plan.StudyInstanceUID
    # nested sequences are kept and cleaned, not dropped
    assert len(p.BeamSequence) == len(plan.BeamSequence) and p.BeamSequence[0].BeamNumber == plan.BeamSequence[0].BeamNumber


def test_the_input_is_not_modified():
    ds = _read("CT_small.dcm")
    before = _bytes(ds)
    deidentify_dataset(ds, KEY)
    assert _bytes(ds) == before


def test_dummy_values_have_the_attribute_vr():
    sr = _read("test-SR.dcm")
    assert "ContentSequence" in sr and len(sr.ContentSequence) > 1
    out = deidentify_dataset(sr, KEY)
    assert len(out.ContentSequence) == 1 and len(out.ContentSequence[0]) == 0  # D on a sequence: one empty item
    ds = pydicom.Dataset()
    ds.VerifyingObserverName = "Doe^Jane"
    ds.SafePositionExitDate = "20200101"
    ds.SpecimenIdentifier = "S-123"
    out = deidentify_dataset(ds, KEY)
    assert (str(out.VerifyingObserverName), out.SafePositionExitDate, out.SpecimenIdentifier) == (
        "ANONYMIZED", "19000101", "ANONYMIZED")


def test_the_table_is_the_profiles():
    assert len(ANNEX_E_BASIC) == 476  # every attribute of Table E.1-1's Basic Profile column
    unknown = [k for k in ANNEX_E_BASIC if tag_for_keyword(k) is None]
    assert not unknown, f"not DICOM keywords: {unknown}"
    assert {resolve_action(c) for c in ANNEX_E_BASIC.values()} == {"X", "Z", "D", "U"}
    expected = {"PatientName": "Z", "PatientID": "Z", "PatientBirthDate": "Z", "PatientSex": "Z", "PatientAge": "X",
                "AccessionNumber": "Z", "StudyDate": "Z", "StudyTime": "Z", "StudyID": "Z", "SeriesDate": "X/D",
                "ContentDate": "Z/D", "AcquisitionDate": "X/Z", "InstitutionName": "X/Z/D", "StationName": "X/Z/D",
                "ReferringPhysicianName": "Z", "OperatorsName": "X/Z/D", "DeviceSerialNumber": "X/Z/D",
                "ReferencedImageSequence": "X/Z/U*", "StudyInstanceUID": "U", "SOPInstanceUID": "U",
                "FrameOfReferenceUID": "U", "OtherPatientIDs": "X", "ProtocolName": "X/D",
                "GraphicAnnotationSequence": "D"}
    assert {k: ANNEX_E_BASIC[k] for k in expected} == expected


def test_combined_codes_resolve_to_the_strictest_part():
    assert [resolve_action(c) for c in ("X/Z/D", "Z/D", "X/D", "X/Z", "X/Z/U*", "U", "K", "C")] == [
        "X", "Z", "X", "X", "X", "U", "K", "C"]
    with pytest.raises(ValueError, match="unknown Annex E action code 'Q'"):
        resolve_action("Q")


def test_facts_follow_the_table():
    facts = {"Modality": "CT", "TransferSyntaxUID": "1.2.840.10008.1.2.1", "InstitutionName": "JFK IMAGING CENTER",
             "ContentDate": "20040119", "PatientSex": "F", "SeriesInstanceUID": "1.2.3.4.5",
             "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "FrameOfReferenceUID": "1.9.9.9"}
    out = deidentify_facts(facts, KEY)
    assert out == {"Modality": "CT", "TransferSyntaxUID": "1.2.840.10008.1.2.1",
                   "SeriesInstanceUID": _uid_pseudonym(KEY, "1.2.3.4.5"),
                   "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "FrameOfReferenceUID": _uid_pseudonym(KEY, "1.9.9.9")}


def test_the_table_ships_as_a_data_file_with_tags_that_match_the_keywords():
    import csv
    import io
    from importlib import resources

    from pydicom.datadict import tag_for_keyword

    text = resources.files("medrobust.data").joinpath("annex_e_basic_profile.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len({r["keyword"] for r in rows}) == 476
    assert {r["keyword"]: r["basic_profile"] for r in rows} == ANNEX_E_BASIC
    for r in rows:
        tag = tag_for_keyword(r["keyword"])
        assert r["tag"] == f"({tag >> 16:04X},{tag & 0xFFFF:04X})", r
    assert {r["group"] for r in rows} >= {"patient"}
