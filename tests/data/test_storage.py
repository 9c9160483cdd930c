"""The boto3 storage layer against a real S3 server (SeaweedFS on loopback): multipart uploads whose
SHA-256 checksum is verified, verified downloads, botocore's retries, errors that name the place, and
``medrobust publish``. Faults (a file changing during its upload, a damaged download) are injected
around the real client calls; the server and the transfers are real."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medrobust.cli import app
from medrobust.data import storage
from medrobust.data.storage import MIB, StorageConfig, StorageError
from medrobust.stack.procs import free_ports
from tests.support.seaweed import seaweed_s3  # noqa: F401 - the session fixture


@pytest.fixture
def store(seaweed_s3, monkeypatch):  # noqa: F811
    for key, value in seaweed_s3.env().items():
        monkeypatch.setenv(key, value)
    cfg = StorageConfig(endpoint_url=seaweed_s3.endpoint_url, region=seaweed_s3.region,
                        multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    client = storage.client(cfg)
    bucket = f"storage-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, cfg, bucket


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_client_uses_botocores_retry_mode_and_retries_a_dead_endpoint_then_names_it(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    port = free_ports(1)[0]  # nothing listens there
    cfg = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=3, connect_timeout=1)
    client = storage.client(cfg)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    attempts = []
    client.meta.events.register("before-send.s3.HeadObject", lambda **kw: attempts.append(1))
    with pytest.raises(StorageError, match=rf"cannot reach the S3 endpoint http://127.0.0.1:{port}.*retried 3"):
        storage.download(client, cfg, "bucket1", "k", Path("/nonexistent/never"))
    assert len(attempts) == 3  # botocore's own loop: the first try and two retries


def test_multipart_upload_is_verified_by_its_composite_checksum_and_downloads_byte_identical(store, tmp_path):
    client, cfg, bucket = store
    big = _random_file(tmp_path / "model.pt", 12 * MIB + 5)  # 3 parts of 5, 5 and 2 MiB
    checksum = storage.upload(client, cfg, big, bucket, "m/model.pt")
    head = client.head_object(Bucket=bucket, Key="m/model.pt", ChecksumMode="ENABLED")
    assert checksum == head["ChecksumSHA256"] and checksum.endswith("-3")
    digests = b"".join(hashlib.sha256(big.read_bytes()[i:i + 5 * MIB]).digest() for i in range(0, big.stat().st_size, 5 * MIB))
    assert checksum == base64.b64encode(hashlib.sha256(digests).digest()).decode() + "-3"
    out = storage.download(client, cfg, bucket, "m/model.pt", tmp_path / "back" / "model.pt")
    assert out.read_bytes() == big.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary file left
    # one part: the whole file's SHA-256
    small = _random_file(tmp_path / "metrics.json", 1000)
    assert storage.upload(client, cfg, small, bucket, "m/metrics.json") == \
        base64.b64encode(hashlib.sha256(small.read_bytes()).digest()).decode()


def test_a_file_that_changes_during_upload_and_a_damaged_download_are_caught(store, tmp_path, monkeypatch):
    client, cfg, bucket = store
    path = _random_file(tmp_path / "x.bin", 6 * MIB)
    real_upload = client.upload_file

    def upload_then_change(*args, **kwargs):
        real_upload(*args, **kwargs)
        path.write_bytes(os.urandom(6 * MIB))  # the local file is no longer what was sent

    monkeypatch.setattr(client, "upload_file", upload_then_change)
    with pytest.raises(StorageError, match=rf"s3://{bucket}/x.bin at http://127.0.0.1:\d+ does not match x.bin"):
        storage.upload(client, cfg, path, bucket, "x.bin")
    monkeypatch.undo()

    real_download = client.download_file

    def damaged(bucket_, key, filename, **kwargs):
        real_download(bucket_, key, filename, **kwargs)
        with open(filename, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00" * 16)

    monkeypatch.setattr(client, "download_file", damaged)
    dest = tmp_path / "got" / "x.bin"
    with pytest.raises(StorageError, match="arrived damaged"):
        storage.download(client, cfg, bucket, "x.bin", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written under the real name


def test_errors_name_the_endpoint_bucket_and_fix(store, seaweed_s3, tmp_path, monkeypatch):  # noqa: F811
    client, cfg, bucket = store
    path = _random_file(tmp_path / "a.bin", 10)
    with pytest.raises(StorageError, match=rf"nothing found while trying to read back s3://{bucket}/missing.bin "
                                           rf"\(bucket '{bucket}' at http://127.0.0.1:\d+\)"):
        storage.download(client, cfg, bucket, "missing.bin", tmp_path / "missing.bin")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "0" * 32)
    with pytest.raises(StorageError, match=rf"S3 refused the credentials .*bucket '{bucket}' at http://127.0.0.1:\d+"
                                           r".*AWS_ACCESS_KEY_ID"):
        storage.upload(storage.client(cfg), cfg, path, bucket, "a.bin")
    with pytest.raises(StorageError, match="not a valid URL"):
        storage.client(StorageConfig(endpoint_url="http://[::1"))
    with pytest.raises(StorageError, match="is not an S3 URL"):
        storage.split_url("https://bucket/x")


def test_publish_uploads_each_file_verified_then_a_manifest(store, seaweed_s3, tmp_path):  # noqa: F811
    client, cfg, bucket = store
    model = tmp_path / "classifier"
    model.mkdir()
    _random_file(model / "model.pt", 6 * MIB)
    (model / "sub").mkdir()
    (model / "sub" / "card.md").write_text("# card\n")
    decision = tmp_path / "decision.json"
    decision.write_text('{"status": "champion"}')
    result = CliRunner().invoke(app,
                                ["publish", f"s3://{bucket}/runs/7", str(model), str(decision),
                                 "--endpoint-url", seaweed_s3.endpoint_url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(client.get_object(Bucket=bucket, Key="runs/7/manifest.json")["Body"].read())
    assert [f["key"] for f in manifest["files"]] == ["runs/7/classifier/model.pt", "runs/7/classifier/sub/card.md",
                                                      "runs/7/decision.json"]
    for entry, local in zip(manifest["files"], [model / "model.pt", model / "sub" / "card.md", decision], strict=True):
        body = client.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert body == local.read_bytes() and entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["bytes"] == len(body)
    # a missing path publishes nothing
    result = CliRunner().invoke(app,
                                ["publish", f"s3://{bucket}/runs/8", str(tmp_path / "missing"),
                                 "--endpoint-url", seaweed_s3.endpoint_url])
    assert result.exit_code == 2
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="runs/8/")
