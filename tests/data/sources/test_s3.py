"""The ``s3`` source against a real S3 server (SeaweedFS on loopback, credentials enforced).

The same synthetic DICOM tree (plus two PNGs labelled by ``file``/``patient_id``) is ingested once
from a local folder and once from a bucket: the datasets must be identical. Then the ways a bucket
can be wrong (credentials, bucket, endpoint, prefix, labels object) must each give an error that
names what to fix, and single bad objects (too large, deleted after the listing) go to quarantine
without losing anything else.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medrobust.data.sources.s3 import S3Source
from medrobust.data.synthetic import generate_tree
from medrobust.stages import ingest
from tests.support.refs import read_quarantine, unmask_skipped
from tests.conftest import tiny_params
from tests.support.seaweed import SeaweedS3, seaweed_s3  # noqa: F401 - the server fixture

pytestmark = pytest.mark.integration

BUCKET = "scans"
COMPARED = ["image_id", "patient_id", "split", "label", "source_sha256"]
#: plain images labelled by file (a key with a space and a non-ASCII letter: URL-encoded in listings)
PNGS = {"photos/p1.png": ("photo-patient-1", "lesion"), "photos/p 2 é.png": ("photo-patient-2", "normal")}


@dataclass(frozen=True)
class Tree:
    """A local tree: ``dicom`` (DICOM files, two PNGs, a DICOMDIR and a .DS_Store) and its labels CSV."""

    dicom: Path
    labels: Path
    n_dicom: int
    folder_out: Path   # the dicom_folder ingest of this tree: the reference every S3 run must match


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _upload(client: Any, root: Path, prefix: str) -> list[str]:
    """Every file under ``root`` as ``prefix + relative path``; returns the keys."""
    keys = []
    for path in _files(root):
        key = prefix + path.relative_to(root).as_posix()
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("tree")
    params = tiny_params()
    generate_tree(root, params.data.synthetic)
    dicom, labels = root / "dicom", root / "labels.csv"
    n_dicom = len(list(dicom.rglob("*.dcm")))
    (dicom / "photos").mkdir()
    rng = np.random.default_rng(3)
    for rel in PNGS:
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(dicom / rel)
    (dicom / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (dicom / "DICOMDIR").write_bytes(b"\0" * 132)
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["SOPInstanceUID", "file", "patient_id", "label"])
        w.writeheader()
        w.writerows(rows)
        w.writerows({"file": rel, "patient_id": pid, "label": lbl} for rel, (pid, lbl) in PNGS.items())
    out = root / "folder_out"
    ingest.run(tiny_params(data={"source": "dicom_folder"}), out, dicom, labels)
    return Tree(dicom, labels, n_dicom, out)


@pytest.fixture(scope="module")
def bucket(seaweed_s3: SeaweedS3, tree: Tree) -> str:  # noqa: F811
    """The bucket with the tree under ``study/``, its labels CSV as ``study/labels.csv`` (inside the
    prefix: it must not be ingested) and a directory marker ``study/sub/``."""
    client = seaweed_s3.client()
    client.create_bucket(Bucket=BUCKET)
    _upload(client, tree.dicom, "study/")
    client.put_object(Bucket=BUCKET, Key="study/labels.csv", Body=tree.labels.read_bytes())
    client.put_object(Bucket=BUCKET, Key="study/sub/", Body=b"")
    return BUCKET


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, seaweed_s3: SeaweedS3, tmp_path: Path) -> SeaweedS3:  # noqa: F811
    """Credentials only in the environment; no profile or instance role can interfere."""
    for name, value in seaweed_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return seaweed_s3


def _params(server: SeaweedS3, **s3: Any) -> Any:
    cfg = {"bucket": BUCKET, "prefix": "study/", "endpoint_url": server.endpoint_url,
           "region": server.region, "labels_key": "study/labels.csv", **s3}
    return tiny_params(data={"source": "s3", "s3": cfg})


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)[COMPARED]


def _shards(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p, allow_pickle=False) for p in sorted((out / "shards").glob("*.npy"))}


def test_bucket_ingest_equals_folder_ingest(bucket, s3_env, tree, tmp_path, monkeypatch):
    monkeypatch.setattr(S3Source, "page_size", 7)  # ~60 objects: the listing spans 9+ pages
    result = ingest.run(_params(s3_env), tmp_path / "s3")

    from_s3, from_folder = _manifest(tmp_path / "s3"), _manifest(tree.folder_out)
    assert len(from_folder) == tree.n_dicom + len(PNGS) == result.n_images
    pd.testing.assert_frame_equal(from_s3, from_folder)
    assert set(from_s3["split"]) == {"train", "val", "test"}
    assert from_s3["source_sha256"].str.len().eq(64).all()
    shards_s3, shards_folder = _shards(tmp_path / "s3"), _shards(tree.folder_out)
    assert list(shards_s3) == list(shards_folder) and len(shards_s3) >= 3
    for name, arr in shards_folder.items():
        np.testing.assert_array_equal(shards_s3[name], arr, err_msg=name)
    assert sum(len(a) for a in shards_s3.values()) == len(from_s3)

    # nothing quarantined: the labels CSV object and the directory marker are not images
    assert result.n_quarantined == 0
    assert pd.read_csv(tmp_path / "s3" / "quarantine.csv").empty
    summary = pd.read_json(tmp_path / "s3" / "ingest.json", typ="series")
    assert summary["source"] == "s3"
    assert unmask_skipped(summary["skipped_files"], extra=(".DS_Store", "DICOMDIR", "sub/")) == [
        ".DS_Store", "DICOMDIR", "sub/"]
    assert summary["labels_without_image"] == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ERROR_CASES = [
    ("wrong secret", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, {},
     ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "'scans'", "{endpoint}", "SignatureDoesNotMatch"]),
    ("unknown access key", {"AWS_ACCESS_KEY_ID": "nobody"}, {},
     ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "'scans'", "InvalidAccessKeyId"]),
    ("no credentials", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, {},
     ["no S3 credentials", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "'scans'"]),
    ("missing bucket", {}, {"bucket": "no-such-bucket"}, ["'no-such-bucket'", "data.s3.bucket"]),
    ("bucket not set", {}, {"bucket": ""}, ["data.s3.bucket is empty"]),
    ("unreachable endpoint", {}, {"endpoint_url": "http://127.0.0.1:{free_port}"},
     ["http://127.0.0.1:{free_port}", "data.s3.endpoint_url"]),
    ("empty prefix", {}, {"prefix": "nothing-here"}, ["s3://scans/nothing-here/", "data.s3.prefix"]),
    ("missing labels object", {}, {"labels_key": "study/missing.csv"},
     ["s3://scans/study/missing.csv", "data.s3.labels_key"]),
]


@pytest.mark.parametrize(("case", "env", "s3", "expected"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bucket_problems_are_clear_errors(case, env, s3, expected, bucket, s3_env, tmp_path, monkeypatch):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    port = _free_port()
    s3 = {k: v.format(free_port=port) for k, v in s3.items()}
    with pytest.raises(ingest.IngestError) as err:
        ingest.run(_params(s3_env, **s3), tmp_path / "out")
    message = str(err.value)
    for text in expected:
        assert text.format(free_port=port, endpoint=s3_env.endpoint_url) in message, (case, message)
    assert s3_env.secret_key not in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_too_large_object_is_quarantined_without_download(seaweed_s3, bucket, s3_env, tree, tmp_path):  # noqa: F811
    client = seaweed_s3.client()
    keys = _upload(client, tree.dicom, "big/")
    limit = max(p.stat().st_size for p in _files(tree.dicom)) + 1024
    client.put_object(Bucket=BUCKET, Key="big/huge.dcm", Body=bytes(limit + 1))
    # labels from the local data.labels_csv this time (labels_key empty)
    params = _params(s3_env, prefix="big", labels_key="", max_object_bytes=limit)
    src = S3Source(params.data, labels_csv=str(tree.labels))
    fetched: list[str] = []
    src.client.meta.events.register("before-parameter-build.s3.GetObject",
                                    lambda params, **_: fetched.append(params["Key"]))
    result = ingest.run(params, tmp_path / "out", source=src)

    q = read_quarantine(tmp_path / "out" / "quarantine.csv", extra=("huge.dcm",), keep_default_na=False)
    assert q[["file", "reason", "source_sha256"]].values.tolist() == [["huge.dcm", "too_large", ""]]
    assert str(limit) in q.at[0, "message"]
    assert "big/huge.dcm" not in fetched  # rejected from its listed size
    skipped = {"big/.DS_Store", "big/DICOMDIR"}
    assert sorted(fetched) == sorted(set(keys) - skipped)  # every other object, once
    pd.testing.assert_frame_equal(_manifest(tmp_path / "out"), _manifest(tree.folder_out))  # nothing else lost
    assert result.n_images == tree.n_dicom + len(PNGS) and result.n_quarantined == 1


def test_object_deleted_after_listing_is_unreadable(seaweed_s3, bucket, s3_env, tree, tmp_path):  # noqa: F811
    client = seaweed_s3.client()
    _upload(client, tree.dicom, "gone/")
    params = _params(s3_env, prefix="gone/")
    src = S3Source(params.data)
    victim = next(o for o in src.objects if o.ref.endswith(".dcm"))
    client.delete_object(Bucket=BUCKET, Key=victim.key)
    result = ingest.run(params, tmp_path / "out", source=src)

    q = read_quarantine(tmp_path / "out" / "quarantine.csv", extra=[o.ref for o in src.objects],
                        keep_default_na=False)
    got = dict(zip(q["file"], q["reason"], strict=True))
    assert got.pop(victim.ref) == "unreadable"
    assert "NoSuchKey" in q.set_index("file").at[victim.ref, "message"]
    # its label row is now a row without an image (pseudonymised UID, never the UID itself)
    assert list(got.values()) == ["image_missing"] and next(iter(got)).startswith("labels:")
    uids = {r["SOPInstanceUID"] for r in csv.DictReader(io.StringIO(tree.labels.read_text())) if r["SOPInstanceUID"]}
    assert not any(uid in q.to_csv() for uid in uids)
    manifest = _manifest(tmp_path / "out")
    assert result.n_images == tree.n_dicom + len(PNGS) - 1
    reference = _manifest(tree.folder_out)
    assert set(manifest["source_sha256"]) < set(reference["source_sha256"])
    assert len(set(reference["source_sha256"]) - set(manifest["source_sha256"])) == 1


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addr, port = local.split(":")
                if table == "tcp":
                    addr = ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
                found.append((addr, int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads Linux /proc")
def test_seaweed_listens_on_loopback_only(seaweed_s3):  # noqa: F811
    listening = _listening(seaweed_s3.pid)
    assert ("127.0.0.1", int(seaweed_s3.endpoint_url.rsplit(":", 1)[1])) in listening
    assert len(listening) >= 4  # master, volume, filer, S3 (+ their gRPC ports)
    assert {addr for addr, _ in listening} == {"127.0.0.1"}, listening


def test_the_server_killed_mid_ingest_stops_it_clearly_and_a_restart_ingests_everything(tree, tmp_path,
                                                                                       monkeypatch):
    """SeaweedFS is SIGKILLed after the fifth download: botocore retries with backoff (bounded), then ingest
    stops with an error naming the endpoint, and no output exists. Restarted on the same ports and data,
    the same ingest completes and equals the folder ingest (issue 14, item 6)."""
    import os
    import signal
    import time

    from medrobust.data.sources import s3 as s3_source
    from tests.support.seaweed import run_seaweed

    root = tmp_path / "weed"
    out = tmp_path / "work" / "ingested"
    with run_seaweed(root) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        _upload(client, tree.dicom, "study/")
        client.put_object(Bucket=BUCKET, Key="study/labels.csv", Body=tree.labels.read_bytes())
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        src = S3Source(_params(server).data)
        calls: list[float] = []

        def count(**_: Any) -> None:  # every attempt botocore makes, retries included
            calls.append(time.monotonic())
            if len(calls) == 5:
                os.killpg(server.pid, signal.SIGKILL)
                time.sleep(0.5)

        src.client.meta.events.register("before-send.s3.GetObject", count)
        t0 = time.monotonic()
        with pytest.raises(ingest.IngestError, match=rf"cannot reach the S3 endpoint {server.endpoint_url} "
                                                     r"while trying to fetch an object \(after 3 attempts.*"
                                                     r"data\.s3\.endpoint_url") as err:
            ingest.run(_params(server), out, source=src)
        elapsed = time.monotonic() - t0
        # bounded: one object's attempts after the kill, then the stop (no retry loop over every object)
        assert len(calls) == 4 + s3_source.MAX_ATTEMPTS, len(calls)
        assert calls[-1] - calls[-2] > 0 and elapsed < 60, elapsed
        assert "study/" not in str(err.value)  # botocore's URL (an object key) is not repeated
        assert not out.exists()  # nothing marked complete
        assert not list(out.parent.glob("*tmp*")) and not list(out.parent.glob(".*tmp*"))  # and no litter
        dead = server
    with run_seaweed(root, again=dead) as server:
        result = ingest.run(_params(server), out)
    assert result.n_images == tree.n_dicom + len(PNGS) and result.n_quarantined == 0
    pd.testing.assert_frame_equal(_manifest(out), _manifest(tree.folder_out))
