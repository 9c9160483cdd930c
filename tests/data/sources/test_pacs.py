"""The ``pacs`` source against a real Orthanc: DICOMweb and DIMSE give the folder's dataset.

Ten real DICOM files from the pydicom and pydicom-data wheels (CT, MR, NM, CR, secondary capture;
uncompressed, RLE, JPEG lossless/extended, JPEG 2000 lossy/lossless; MONOCHROME1 and 2; a VOI LUT;
eight patients, one series with three instances) are uploaded to Orthanc by REST, then ingested
from the folder, by DICOMweb (QIDO-RS + WADO-RS), by DIMSE C-FIND + C-MOVE and by C-FIND + C-GET.
The four manifests and shard sets must agree.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from medrobust.params import Params
from medrobust.data.deid import load_key, pseudonym
from medrobust.data.sources import Rejected, SourceError
from medrobust.data.sources.pacs import PacsSource
from medrobust.data.sources.pacs.query import describe_filters, split_filters
from medrobust.stages import ingest
from tests.conftest import tiny_params
from tests.support.orthanc import Orthanc, free_port, running_orthanc

#: (file, label): single-frame grey images that decode here; several compressed transfer syntaxes
FILES = [
    ("CT_small.dcm", "normal"),           # CT, Explicit VR LE
    ("MR_small_RLE.dcm", "lesion"),       # MR, RLE lossless
    ("JPEG2000.dcm", "normal"),           # NM, JPEG 2000       } one patient, study and series:
    ("JPGExtended.dcm", "lesion"),        # NM, JPEG extended    } three instances
    ("JPEG-LL.dcm", "lesion"),            # NM, JPEG lossless    }
    ("693_J2KR.dcm", "normal"),           # CT 512x512, JPEG 2000 lossless
    ("MR2_J2KI.dcm", "lesion"),           # MR 1024x1024, JPEG 2000
    ("RG3_J2KI.dcm", "normal"),           # CR 1760x1760, MONOCHROME1, JPEG 2000
    ("examples_overlay.dcm", "lesion"),   # MR, Explicit VR LE
    ("vlut_04.dcm", "normal"),            # secondary capture with a VOI LUT
]
MR_FILES = {"MR_small_RLE.dcm", "MR2_J2KI.dcm", "examples_overlay.dcm"}              # Modality (series level)
STUDY_20040826 = {"MR_small_RLE.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "JPEG-LL.dcm", "MR2_J2KI.dcm",
                  "RG3_J2KI.dcm"}                                                   # StudyDate (study level)
MANIFEST_KEYS = ["image_id", "patient_id", "split", "label", "label_index", "height", "width", "pixel_min",
                 "pixel_max", "shard", "shard_index", "modality", "photometric", "bits_stored", "source_rows",
                 "source_columns", "transfer_syntax"]
REF = re.compile(r"^pacs:study-\d+/series-\d+/ima-[0-9a-f]{16}$")


def _wheel_file(name: str) -> Path:
    """A file shipped in pydicom's wheel or in pydicom-data's (package ``data_store``), never downloaded."""
    import data_store

    external = Path(data_store.__file__).parent / "data" / name
    return external if external.is_file() else Path(get_testdata_file(name))


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(folder of the files, labels CSV keyed by SOPInstanceUID, file name -> SOPInstanceUID)."""
    root = tmp_path_factory.mktemp("pacs_data")
    folder = root / "dicom"
    folder.mkdir()
    uids: dict[str, str] = {}
    rows = ["SOPInstanceUID,label"]
    for name, label in FILES:
        shutil.copy(_wheel_file(name), folder / name)
        uids[name] = _uid(folder / name)
        rows.append(f"{uids[name]},{label}")
    assert len(set(uids.values())) == len(FILES)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder, root / "labels.csv", uids


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, Path, dict[str, str]]) -> Iterator[Orthanc]:
    """A real Orthanc holding the ten files (uploaded with REST ``POST /instances``)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        for name, _ in FILES:
            server.upload(dataset[0] / name)
        assert server.instance_count() == len(FILES)
        yield server


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, orthanc: Orthanc) -> None:
    monkeypatch.delenv("MEDROBUST_PACS_TOKEN", raising=False)
    monkeypatch.setenv("MEDROBUST_PACS_USER", orthanc.auth[0])
    monkeypatch.setenv("MEDROBUST_PACS_PASSWORD", orthanc.auth[1])


def _params(labels: Path, source: str = "pacs", **pacs: Any) -> Params:
    """Tiny params for ten images in eight patients: every split non-empty, any class balance."""
    return tiny_params(
        data={"source": source, "labels_csv": str(labels), "split": {"train": 0.5, "val": 0.25, "test": 0.25},
              "pacs": {"timeout_s": 20, **pacs}},
        validation={"min_images_per_split": 1, "min_class_fraction": 0.0, "max_class_fraction": 1.0,
                    "max_quarantine_fraction": 0.0},
    )


def _pacs(orthanc: Orthanc, protocol: str, retrieve: str = "move", **extra: Any) -> dict[str, Any]:
    return {"protocol": protocol, "url": orthanc.dicomweb_url, "host": "127.0.0.1", "port": orthanc.dicom_port,
            "called_aet": orthanc.aet, "calling_aet": orthanc.calling_aet, "retrieve": retrieve,
            "move_port": orthanc.move_port, **extra}


def _shards(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((out / "shards").glob("*.npy"))}


@pytest.fixture(scope="module")
def from_folder(tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, Path, dict[str, str]]) -> Path:
    folder, labels, _ = dataset
    out = tmp_path_factory.mktemp("ingest") / "folder"
    result = ingest.run(_params(labels, "dicom_folder"), out, folder, labels)
    assert result.n_images == len(FILES) and result.n_quarantined == 0
    return out


# --------------------------------------------------------------------------------------------------
# the same dataset, whichever way it comes
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(("protocol", "retrieve"), [("dicomweb", "move"), ("dimse", "move"), ("dimse", "get")],
                         ids=["dicomweb", "dimse-c-move", "dimse-c-get"])
def test_pacs_ingest_equals_folder_ingest(protocol, retrieve, orthanc, dataset, from_folder, credentials, tmp_path):
    _, labels, uids = dataset
    out = tmp_path / "pacs"
    result = ingest.run(_params(labels, **_pacs(orthanc, protocol, retrieve)), out)
    assert result.n_images == len(FILES) and result.n_quarantined == 0 and result.validation_success

    folder_m = pd.read_csv(from_folder / "manifest.csv")
    pacs_m = pd.read_csv(out / "manifest.csv")
    assert len(pacs_m) == len(FILES) and pacs_m["patient_id"].nunique() == 8
    assert set(pacs_m["split"]) == {"train", "val", "test"}
    # same images, patients, splits, labels, pixel ranges, shard positions and header facts
    pd.testing.assert_frame_equal(pacs_m[MANIFEST_KEYS], folder_m[MANIFEST_KEYS])
    # compressed objects were not transcoded on the way
    assert {"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.51"} <= set(pacs_m["transfer_syntax"])
    key = load_key()
    assert set(pacs_m["image_id"]) == {pseudonym(key, "image", u) for u in uids.values()}
    if protocol == "dicomweb":
        # WADO-RS with transfer-syntax=* returns the stored file itself: the same bytes as the folder
        assert pacs_m["source_sha256"].tolist() == folder_m["source_sha256"].tolist()
    else:
        # DIMSE moves a dataset, not a file: the file meta is ours (implementation UID, group length)
        # and Orthanc's DCMTK re-serialises the dataset, so the bytes (and their hash) differ while the
        # decoded pixels, below, are identical
        assert not set(pacs_m["source_sha256"]) & set(folder_m["source_sha256"])
    a, b = _shards(from_folder), _shards(out)
    assert a.keys() == b.keys() and sum(len(v) for v in a.values()) == len(FILES)
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert pd.read_csv(out / "quarantine.csv").empty


# --------------------------------------------------------------------------------------------------
# behaviour of the source itself
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_filters_select_studies_and_series(protocol, orthanc, dataset, credentials):
    _, labels, uids = dataset
    key = load_key()

    def selected(filters: dict[str, str]) -> set[str]:
        src = PacsSource(_params(labels, **_pacs(orthanc, protocol, filters=filters)).data)
        try:
            refs = [item.ref for item in src.items()] if protocol == "dicomweb" else [i.ref for i in src.instances]
        finally:
            src.close()
        assert all(REF.match(r) for r in refs), refs
        by_pseudonym = {pseudonym(key, "image", u): name for name, u in uids.items()}
        return {by_pseudonym[r.rsplit("/", 1)[1]] for r in refs}

    assert selected({}) == {name for name, _ in FILES}
    assert selected({"Modality": "MR"}) == MR_FILES                   # a series attribute
    assert selected({"StudyDate": "20040826"}) == STUDY_20040826      # a study attribute
    assert selected({"StudyDate": "20040826", "Modality": "MR"}) == MR_FILES & STUDY_20040826


@pytest.mark.integration
def test_dicomweb_fetches_each_instance_only_when_read(orthanc, dataset, credentials):
    _, labels, uids = dataset
    src = PacsSource(_params(labels, **_pacs(orthanc, "dicomweb")).data)
    urls: list[str] = []
    src.client.session.hooks["response"].append(lambda resp, *a, **k: urls.append(resp.request.path_url))
    try:
        items = list(src.items())
        assert len(items) == len(FILES) and urls == []   # the query happened when the source was opened
        raw = items[3].read()
        assert len(urls) == 1 and "/instances/" in urls[0]
        assert pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID in uids.values()
        for item in items:
            assert not any(u in item.ref for u in uids.values())  # refs hold no UID
    finally:
        src.close()


@pytest.mark.integration
@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_dimse_keeps_received_files_in_a_private_folder_until_read(retrieve, orthanc, dataset):
    _, labels, _ = dataset
    src = PacsSource(_params(labels, **_pacs(orthanc, "dimse", retrieve, filters={"Modality": "NM"})).data)
    try:
        items = list(src.items())  # ingest may look ahead: every item stays readable
        folder = src.client._tmp
        assert folder is not None and (folder.stat().st_mode & 0o777) == 0o700
        assert len(items) == 3 and len(list(folder.iterdir())) == 3
        sizes = [len(item.read()) for item in items]
        assert min(sizes) > 1000 and list(folder.iterdir()) == []  # a read hands the file over
        with pytest.raises(RuntimeError, match="read twice"):
            items[0].read()
        unread = next(iter(src.items()))
        assert len(list(folder.iterdir())) == 3
    finally:
        src.close()
    assert not folder.exists()  # close() removes whatever was not read
    with pytest.raises(RuntimeError):
        unread.read()


@pytest.mark.integration
@pytest.mark.parametrize(("protocol", "retrieve"), [("dicomweb", "move"), ("dimse", "move"), ("dimse", "get")])
def test_an_instance_deleted_after_the_query_is_not_retrieved(protocol, retrieve, orthanc, dataset, credentials):
    folder, labels, _ = dataset
    src = PacsSource(_params(labels, **_pacs(orthanc, protocol, retrieve, filters={"Modality": "NM"})).data)
    gone = requests.post(f"{orthanc.url}/tools/lookup", data=_uid(folder / "JPGExtended.dcm"), auth=orthanc.auth,
                         timeout=10).json()[0]["ID"]
    assert requests.delete(f"{orthanc.url}/instances/{gone}", auth=orthanc.auth, timeout=10).status_code == 200
    try:
        outcomes = []
        for item in src.items():
            try:
                outcomes.append(len(item.read()) > 0)
            except Rejected as rej:
                assert rej.reason == "not_retrieved"
                assert ("did not send it" if protocol == "dimse" else "HTTP 404") in rej.message
                outcomes.append(False)
        assert sorted(outcomes) == [False, True, True]
    finally:
        src.close()
        orthanc.upload(folder / "JPGExtended.dcm")
    assert orthanc.instance_count() == len(FILES)


# --------------------------------------------------------------------------------------------------
# errors that stop ingest before anything is written
# --------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_wrong_password_names_the_environment_variables(orthanc, dataset, monkeypatch, tmp_path):
    _, labels, _ = dataset
    monkeypatch.setenv("MEDROBUST_PACS_USER", orthanc.auth[0])
    monkeypatch.setenv("MEDROBUST_PACS_PASSWORD", "wrong-password")
    monkeypatch.delenv("MEDROBUST_PACS_TOKEN", raising=False)
    with pytest.raises(ingest.IngestError, match="refused the credentials") as err:
        ingest.run(_params(labels, **_pacs(orthanc, "dicomweb")), tmp_path / "out")
    for var in ("MEDROBUST_PACS_USER", "MEDROBUST_PACS_PASSWORD", "MEDROBUST_PACS_TOKEN"):
        assert var in str(err.value)
    assert "wrong-password" not in str(err.value)
    assert not (tmp_path / "out").exists()

    monkeypatch.delenv("MEDROBUST_PACS_USER")
    monkeypatch.delenv("MEDROBUST_PACS_PASSWORD")
    with pytest.raises(ingest.IngestError, match=r"HTTP 401.*none are set"):
        ingest.run(_params(labels, **_pacs(orthanc, "dicomweb")), tmp_path / "out")


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_filters_matching_nothing_stop_ingest(protocol, orthanc, dataset, credentials, tmp_path):
    _, labels, _ = dataset
    params = _params(labels, **_pacs(orthanc, protocol, filters={"StudyDate": "19000101", "PatientID": "P-1"}))
    with pytest.raises(ingest.IngestError, match=r"no instances matching data\.pacs\.filters") as err:
        ingest.run(params, tmp_path / "out")
    assert "StudyDate=19000101" in str(err.value) and "P-1" not in str(err.value)  # identifying values masked
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_unreachable_or_refusing_peers_name_the_setting(orthanc, dataset, credentials, tmp_path):
    _, labels, _ = dataset
    dead = free_port()
    with pytest.raises(ingest.IngestError, match=r"cannot connect .*connection refused.*data\.pacs\.url"):
        ingest.run(_params(labels, **_pacs(orthanc, "dicomweb", url=f"http://127.0.0.1:{dead}/dicom-web")),
                   tmp_path / "a")
    with pytest.raises(ingest.IngestError, match=r"no DICOMweb service .*data\.pacs\.url"):
        ingest.run(_params(labels, **_pacs(orthanc, "dicomweb", url=f"{orthanc.url}/not-dicomweb")), tmp_path / "b")
    with pytest.raises(ingest.IngestError, match=r"cannot reach the PACS .*data\.pacs\.host and data\.pacs\.port"):
        ingest.run(_params(labels, **_pacs(orthanc, "dimse", port=dead)), tmp_path / "c")
    with pytest.raises(ingest.IngestError, match=r"rejected the association .*data\.pacs\.called_aet"):
        ingest.run(_params(labels, **_pacs(orthanc, "dimse", called_aet="NOT-ORTHANC")), tmp_path / "d")
    # Orthanc aborts the association of an AE title it does not know (not in DicomModalities)
    with pytest.raises(ingest.IngestError, match=r"aborted the association .*'STRANGER'.*data\.pacs\.calling_aet"):
        ingest.run(_params(labels, **_pacs(orthanc, "dimse", calling_aet="STRANGER")), tmp_path / "e")
    with socket.socket() as busy:  # our C-MOVE storage SCP cannot listen: found at open, not mid-ingest
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ingest.IngestError, match=r"cannot listen on port \d+ .*data\.pacs\.move_port"):
            ingest.run(_params(labels, **_pacs(orthanc, "dimse", move_port=busy.getsockname()[1])), tmp_path / "f")
    assert not any((tmp_path / d).exists() for d in "abcdef")


# --------------------------------------------------------------------------------------------------
# unit tests (no server)
# --------------------------------------------------------------------------------------------------
def _peer(reply: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """A raw TCP peer on 127.0.0.1: on each connection it sends ``reply`` at once and closes (the
    race a busy Orthanc hits: the A-ASSOCIATE-RJ and the close arrive before pynetdicom looks), or,
    with ``None``, holds the connection open and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            if reply is None:
                conn.recv(65536)
                time.sleep(3)
            else:
                conn.sendall(reply)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("reply, message", [
    # A-ASSOCIATE-RJ: type 3, length 4, result 1 (permanent), source 1 (user), reason 7 (called AE)
    (b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07", r"rejected the association .*data\.pacs\.called_aet"),
    # A-ABORT: type 7, length 4, source 2 (provider)
    (b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00", r"aborted the association request .*data\.pacs\.calling_aet"),
    (None, r"accepted the connection but did not answer .*within 1 s.*data\.pacs\.timeout_s"),
])
def test_a_peer_that_answers_and_closes_at_once_is_named_for_what_it_said(reply, message):
    from medrobust.data.sources.pacs.dimse import DimseClient

    server, thread = _peer(reply)
    cfg = types.SimpleNamespace(host="127.0.0.1", port=server.getsockname()[1], called_aet="ORTHANC",
                                calling_aet="MEDROBUST", timeout_s=1.0)
    client = DimseClient(cfg)
    ae = client._ae()
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    try:
        with pytest.raises(SourceError, match=message):
            client._associate(ae)
    finally:
        server.close()
        thread.join(5)


def test_filters_go_to_their_query_level_and_unknown_keywords_fail():
    study, series, instance = split_filters({
        "StudyDate": "20200101-", "Modality": "MG", "PatientID": "X", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2",
        "BodyPartExamined": "BREAST",
    })
    assert study == {"StudyDate": "20200101-", "PatientID": "X"}
    assert series == {"Modality": "MG", "BodyPartExamined": "BREAST"}
    assert instance == {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2"}
    with pytest.raises(SourceError, match=r"data\.pacs\.filters: 'Modalty' is not a DICOM keyword"):
        split_filters({"Modalty": "MG"})
    assert describe_filters({"PatientID": "123", "Modality": "MG"}) == "PatientID=<set>, Modality=MG"


def test_credentials_come_from_the_environment_only(dataset, monkeypatch):
    _, labels, _ = dataset
    monkeypatch.delenv("MEDROBUST_PACS_TOKEN", raising=False)
    monkeypatch.delenv("MEDROBUST_PACS_PASSWORD", raising=False)
    monkeypatch.setenv("MEDROBUST_PACS_USER", "someone")
    with pytest.raises(SourceError, match="MEDROBUST_PACS_PASSWORD is not set"):
        PacsSource(_params(labels, protocol="dicomweb", url="http://127.0.0.1:9/dicom-web").data)
    with pytest.raises(SourceError, match=r"data\.pacs\.url is empty"):
        PacsSource(_params(labels, protocol="dicomweb", url="").data)
    assert os.environ.get("MEDROBUST_PACS_TOKEN") is None


def test_a_missing_orthanc_fails_the_test_unless_skipping_is_asked_for(monkeypatch, tmp_path):
    import tests.support.orthanc as support

    monkeypatch.setattr(support, "ORTHANC_BIN", str(tmp_path / "no-such-Orthanc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MEDROBUST_SKIP_PACS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="make system-deps"):
        support.orthanc_binary()
    monkeypatch.setenv("MEDROBUST_SKIP_PACS", "1")
    with pytest.raises(pytest.skip.Exception, match="make system-deps"):
        support.orthanc_binary()
