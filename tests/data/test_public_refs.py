"""Operator files name items by a keyed hash, never by a raw source path (issue 14, item 4).

PACS exports name folders after patients (``MRN12345_Chen^Mei/``). A file there that cannot be read
has no header to say which part of its path identifies someone, so quarantine.csv, ingest.json and
the logs carry :func:`~medrobust.data.deid.public_ref` only, and ``medrobust quarantine locate``
re-lists the source to find the file again on the operator's machine.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.data.deid import public_ref, public_skipped
from medrobust.data.synthetic import generate_tree
from medrobust.params import load_params
from medrobust.stages import ingest
from tests.conftest import tiny_params, tiny_raw, write_params
from tests.support.refs import read_quarantine

KEY = b"k" * 32
NAMES = ("MRN12345", "Chen", "Mei", "GARCIA", "LUCIA", "19700101")


@pytest.mark.parametrize("ref", ["train[17]", "pacs:study-3/series-1/ima-0123456789abcdef",
                                 "labels:ima-0123456789abcdef", "clinical:CMMD_clinicaldata.xlsx:row 22"])
def test_references_that_identify_no_one_stay_as_they_are(ref):
    assert public_ref(KEY, ref) == ref


def test_a_path_becomes_a_keyed_hash_that_keeps_only_its_kind_and_suffix():
    ref = public_ref(KEY, "MRN12345_Chen^Mei/Study 1/IM0001.DCM")
    assert ref.startswith("fil-") and ref.endswith(".dcm") and len(ref) == len("fil-") + 16 + len(".dcm")
    assert not any(n.lower() in ref.lower() for n in NAMES)
    assert public_ref(KEY, ref) == ref  # already public: unchanged, so it can be passed around
    assert public_ref(b"x" * 32, "MRN12345_Chen^Mei/Study 1/IM0001.DCM") != ref  # the key decides
    assert public_ref(KEY, "GARCIA_LUCIA_19700101/x") != public_ref(KEY, "GARCIA_LUCIA_19700101/y")
    assert public_ref(KEY, "labels:GARCIA_LUCIA/a.png").startswith("labels:fil-")
    assert public_ref(KEY, "garcia:lucia/a.png").startswith("fil-")  # an unknown "prefix" is part of the path
    assert public_ref(KEY, "GARCIA.LUCIA_19700101").startswith("fil-") and "." not in public_ref(KEY, "a.b_c_d_e_f")[4:]
    assert public_skipped(KEY, "GARCIA_LUCIA/pipe.dcm (FIFO: not read)") == \
        f"{public_ref(KEY, 'GARCIA_LUCIA/pipe.dcm')} (FIFO: not read)"
    assert "LUCIA" not in public_skipped(KEY, "a/x.jpg (copy of GARCIA_LUCIA/x.jpg)")


def _pacs_export(tmp_path):
    """The synthetic tree plus two folders named after their patient, each with a readable image of that
    patient, a file that is not DICOM, and a dangling link."""
    raw = tiny_raw(validation={"max_quarantine_fraction": 0.5})
    params_file = write_params(tmp_path / "params.yaml", raw)
    generate_tree(tmp_path / "src", tiny_params().data.synthetic)
    dicom, labels = tmp_path / "src" / "dicom", tmp_path / "src" / "labels.csv"
    template = sorted(dicom.rglob("*.dcm"))[0]
    rows = []
    for folder, (pid, name) in {"MRN12345_Chen^Mei": ("MRN12345", "Chen^Mei"),
                                "GARCIA_LUCIA_19700101": ("GARCIA19700101", "GARCIA^LUCIA")}.items():
        (dicom / folder).mkdir()
        ds = pydicom.dcmread(template)
        ds.PatientID, ds.PatientName = pid, name
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dicom / folder / "IM0001.dcm")
        rows.append((ds.SOPInstanceUID, "lesion"))
        (dicom / folder / "IM0002.dcm").write_bytes(b"scanner crashed while writing" * 8)
        os.symlink(tmp_path / "gone", dicom / folder / "IM0003.dcm")
    with open(labels, "a", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return params_file, dicom, labels


def test_no_folder_name_reaches_operator_files_and_locate_finds_each_file(tmp_path, caplog):
    params_file, dicom, labels = _pacs_export(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        result = ingest.run(load_params(params_file), out, dicom, labels)
    assert result.n_quarantined == 2  # the two files that are not DICOM; the good ones are kept

    for f in [p for p in out.rglob("*") if p.is_file() and p.suffix in {".csv", ".json", ".md", ".html"}]:
        text = f.read_text(errors="replace")
        assert not [n for n in NAMES if n.lower() in text.lower()], f
    assert not [n for n in NAMES if n in caplog.text]
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "--source", str(dicom), str(out)])
    assert res.exit_code == 0, res.output

    q = read_quarantine(out / "quarantine.csv")
    assert sorted(q["reason"]) == ["not_dicom", "not_dicom"] and q["file"].str.fullmatch(r"fil-[0-9a-f]{16}\.dcm").all()
    for ref in q["file"]:
        res = runner.invoke(app, ["quarantine", "locate", ref, "--params", str(params_file),
                                  "--dicom-dir", str(dicom), "--labels-csv", str(labels)])
        assert res.exit_code == 0, res.output
        assert res.output.strip() in {"MRN12345_Chen^Mei/IM0002.dcm", "GARCIA_LUCIA_19700101/IM0002.dcm"}
    skipped = [s for s in json.loads((out / "ingest.json").read_text())["skipped_files"] if "dangling" in s]
    assert len(skipped) == 2
    res = runner.invoke(app, ["quarantine", "locate", skipped[0].split(" (")[0], "--params", str(params_file),
                              "--dicom-dir", str(dicom), "--labels-csv", str(labels)])
    assert res.exit_code == 0 and res.output.strip().endswith("IM0003.dcm (dangling symlink)"), res.output
    res = runner.invoke(app, ["quarantine", "locate", "fil-0000000000000000.dcm", "--params", str(params_file),
                              "--dicom-dir", str(dicom), "--labels-csv", str(labels)])
    assert res.exit_code == 1
    shutil.rmtree(out)
