"""What ingest does with entries that are not plain files under the source folder (issue 14, item 2).

Links out of the folder are never read (``/etc/passwd`` is not hashed into quarantine.csv), links inside
it only with ``data.follow_symlinks``, and every skipped entry — link, dangling link, FIFO — is listed
with its reason in ``ingest.json``: nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd

from medrobust.data.synthetic import generate_tree
from medrobust.stages import ingest
from tests.support.refs import read_quarantine, unmask_skipped
from tests.conftest import tiny_params


def _tree(tmp_path):
    params = tiny_params()
    generate_tree(tmp_path / "src", params.data.synthetic)
    dicom = tmp_path / "src" / "dicom"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    first = sorted(dicom.rglob("*.dcm"))[0]
    shutil.copy(first, outside / "outside.dcm")
    os.symlink("/etc/passwd", dicom / "passwd.dcm")
    os.symlink("/proc/self/environ", dicom / "environ.dcm")
    os.symlink(outside / "outside.dcm", dicom / "outside_link.dcm")
    os.symlink(first, dicom / "inside_link.dcm")  # a second name for an image already in the folder
    os.symlink(tmp_path / "gone.dcm", dicom / "dangling.dcm")
    os.symlink(outside, dicom / "linked_folder")
    os.mkfifo(dicom / "pipe.dcm")
    return params, dicom, tmp_path / "src" / "labels.csv"


def test_links_and_special_files_are_listed_with_their_reason_and_never_read(tmp_path):
    params, dicom, labels = _tree(tmp_path)
    result = ingest.run(params, tmp_path / "out", dicom, labels)  # the FIFO would block a reader: it is not read
    summary = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert sorted(unmask_skipped(summary["skipped_files"], dicom)) == sorted([
        "dangling.dcm (dangling symlink)", "environ.dcm (symlink: data.follow_symlinks is false)",
        "inside_link.dcm (symlink: data.follow_symlinks is false)",
        "outside_link.dcm (symlink: data.follow_symlinks is false)",
        "passwd.dcm (symlink: data.follow_symlinks is false)", "pipe.dcm (FIFO: not read)",
        "linked_folder (symlink to a folder: not followed)"])
    assert not any(n in json.dumps(summary) for n in ("passwd", "environ", "outside", "linked_folder"))
    q = read_quarantine(tmp_path / "out" / "quarantine.csv", dicom)
    assert not q["file"].str.contains("passwd|environ|outside").any()
    assert result.n_images == len(sorted(p for p in dicom.rglob("*.dcm") if p.is_file() and not p.is_symlink()))


def test_follow_symlinks_reads_links_inside_the_folder_only(tmp_path):
    params, dicom, labels = _tree(tmp_path)
    params = tiny_params(data={"follow_symlinks": True})
    ingest.run(params, tmp_path / "out", dicom, labels)
    summary = json.loads((tmp_path / "out" / "ingest.json").read_text())
    skipped = sorted(unmask_skipped(summary["skipped_files"], dicom))
    assert "outside_link.dcm (symlink out of the source folder: not followed)" in skipped
    assert "passwd.dcm (symlink out of the source folder: not followed)" in skipped
    assert not any(s.startswith("inside_link.dcm") for s in skipped)
    # the inside link is read: a byte copy of an image, so one of the two names is the duplicate
    q = read_quarantine(tmp_path / "out" / "quarantine.csv", dicom)
    first = str(sorted(p for p in dicom.rglob("*.dcm") if p.is_file() and not p.is_symlink())[0].relative_to(dicom))
    assert q["reason"].tolist() == ["duplicate_image"] and q["file"].iloc[0] in {"inside_link.dcm", first}
