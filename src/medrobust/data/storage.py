"""Object storage on boto3: one client recipe, verified uploads and downloads, errors that name the place.

Used by the ``s3`` ingest source and by ``medrobust publish`` (a model and its evidence to a bucket).

* **Retries** are botocore's own (``retries={"mode": "standard" | "adaptive", "total_max_attempts": n}``):
  exponential backoff with jitter on throttling, 5xx and connection errors. No hand-written loop.
* **Uploads** go through boto3's managed transfer: multipart above ``multipart_threshold``, in parts of
  ``multipart_chunksize``, with an SHA-256 checksum per part that the server checks on receipt. After
  the upload the object's checksum is read back (``ChecksumMode=ENABLED``) and compared with the
  local file's: the full-object SHA-256 for one part, the composite (SHA-256 of the parts' SHA-256
  digests, ``-N``) for N parts. A mismatch raises :class:`StorageError`.
* **Downloads** land in a temporary file beside the target and are renamed only once the size and
  checksum agree, so an interrupted download never leaves a half-written file under the real name.
* **Errors** (:class:`StorageError`) name the endpoint, the bucket and key, and what to fix.

Credentials come from boto3's default chain (environment, profile, instance role), never from params.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: error codes that mean "these credentials are not accepted here"
AUTH_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
})
CREDENTIAL_ENV = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
MIB = 1024 * 1024


class StorageError(RuntimeError):
    """An object-store operation failed; the message names the endpoint, bucket and what to fix."""


@dataclass(frozen=True)
class StorageConfig:
    """How to reach a store and move objects (the defaults suit AWS and SeaweedFS/MinIO alike)."""

    endpoint_url: str = ""            # empty: AWS
    region: str = "us-east-1"
    retry_mode: str = "standard"      # botocore: legacy | standard | adaptive
    max_attempts: int = 5             # botocore's total_max_attempts (first try included)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    multipart_threshold: int = 64 * MIB
    multipart_chunksize: int = 16 * MIB
    max_concurrency: int = 4

    @property
    def where(self) -> str:
        return self.endpoint_url or f"the AWS endpoint of {self.region}"


def client(cfg: StorageConfig) -> Any:
    """A boto3 S3 client with botocore's retry mode, timeouts and path-style addressing for custom endpoints."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": cfg.retry_mode, "total_max_attempts": cfg.max_attempts},
                    connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
                    s3={"addressing_style": "path" if cfg.endpoint_url else "auto"})
    try:
        return boto3.session.Session().client("s3", endpoint_url=cfg.endpoint_url or None,
                                              region_name=cfg.region or None, config=config)
    except ValueError as exc:  # a malformed endpoint URL
        raise StorageError(f"S3 endpoint {cfg.endpoint_url!r} is not a valid URL ({exc}): use e.g. "
                           "http://127.0.0.1:8333, or leave it empty for AWS") from None


def error_code(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def explain(exc: BaseException, cfg: StorageConfig, bucket: str, action: str) -> StorageError:
    """A :class:`StorageError` for a botocore failure: what failed, where, and what to fix."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    code, status = error_code(exc)
    place = f"bucket {bucket!r} at {cfg.where}"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(f"no S3 credentials found to {action} ({place}): set {CREDENTIAL_ENV}")
    if isinstance(exc, BotoConnectionError):
        return StorageError(f"cannot reach the S3 endpoint {cfg.where} to {action} ({exc}); check the endpoint "
                            f"URL and that the server is running (botocore retried {cfg.max_attempts} times)")
    if code in AUTH_CODES or status == 403:
        return StorageError(f"S3 refused the credentials to {action} ({place}, {code or status}): set "
                            f"{CREDENTIAL_ENV} to a key with access to the bucket")
    if code == "NoSuchBucket":
        return StorageError(f"S3 bucket {bucket!r} does not exist at {cfg.where} (while trying to {action})")
    if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
        return StorageError(f"nothing found while trying to {action} ({place}): check the bucket and the key")
    return StorageError(f"S3 error while trying to {action} ({place}): {exc}")


def part_sizes(size: int, chunk: int) -> list[int]:
    """The part sizes of a ``size``-byte multipart upload in parts of ``chunk`` bytes."""
    return [min(chunk, size - start) for start in range(0, size, chunk)] or [0]


def file_checksum(path: Path, parts: list[int] | None = None) -> str:
    """The SHA-256 checksum S3 reports for ``path`` uploaded in ``parts`` (their sizes; None: one part).

    One part: base64 of the file's SHA-256. N parts: base64 of the SHA-256 of the N parts' SHA-256
    digests, then ``-N`` (S3's composite checksum).
    """
    whole, digests = hashlib.sha256(), []
    with open(path, "rb") as fh:
        for n in parts or [None]:
            part = hashlib.sha256()
            remaining = n
            while remaining is None or remaining > 0:
                chunk = fh.read(8 * MIB if remaining is None else min(8 * MIB, remaining))
                if not chunk:
                    break
                whole.update(chunk)
                part.update(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
            digests.append(part.digest())
    if not parts or len(parts) == 1:
        return base64.b64encode(whole.digest()).decode()
    return f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"


def _transfer(cfg: StorageConfig) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=cfg.multipart_threshold, multipart_chunksize=cfg.multipart_chunksize,
                          max_concurrency=cfg.max_concurrency)


def _remote_checksum(s3: Any, cfg: StorageConfig, bucket: str, key: str) -> tuple[str, int]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, cfg, bucket, f"read back s3://{bucket}/{key}") from None
    return str(head.get("ChecksumSHA256") or ""), int(head.get("ContentLength", -1))


def upload(s3: Any, cfg: StorageConfig, path: Path, bucket: str, key: str) -> str:
    """Upload ``path`` to ``s3://bucket/key`` (multipart when large) and verify its checksum; the checksum."""
    from botocore.exceptions import BotoCoreError, ClientError

    size = path.stat().st_size
    multipart = size >= cfg.multipart_threshold
    try:
        s3.upload_file(str(path), bucket, key, Config=_transfer(cfg), ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, cfg, bucket, f"upload {path.name} to s3://{bucket}/{key}") from None
    except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ClientError | BotoCoreError):
            raise explain(cause, cfg, bucket, f"upload {path.name} to s3://{bucket}/{key}") from None
        raise
    expected = file_checksum(path, part_sizes(size, cfg.multipart_chunksize) if multipart else None)
    remote, length = _remote_checksum(s3, cfg, bucket, key)
    if length != size or (remote and remote != expected):
        raise StorageError(f"s3://{bucket}/{key} at {cfg.where} does not match {path.name} after upload "
                           f"(size {length} vs {size}, SHA-256 {remote or '?'} vs {expected}); upload it again")
    if not remote:
        raise StorageError(f"the store at {cfg.where} kept no SHA-256 checksum for s3://{bucket}/{key}, so the "
                           "upload cannot be verified; use a store that supports S3 checksums")
    return expected


def _uploaded_parts(s3: Any, cfg: StorageConfig, bucket: str, key: str) -> list[int]:
    """The sizes of the parts an object was uploaded in (its composite checksum is over them)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        attrs = s3.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"], MaxParts=10_000)
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, cfg, bucket, f"read the parts of s3://{bucket}/{key}") from None
    return [int(p["Size"]) for p in sorted(attrs["ObjectParts"]["Parts"], key=lambda p: p["PartNumber"])]


def download(s3: Any, cfg: StorageConfig, bucket: str, key: str, dest: Path) -> Path:
    """Download ``s3://bucket/key`` to ``dest`` through a temporary file, renamed once size and checksum agree."""
    from botocore.exceptions import BotoCoreError, ClientError

    remote, length = _remote_checksum(s3, cfg, bucket, key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    try:
        s3.download_file(bucket, key, str(tmp), Config=_transfer(cfg))
        size = tmp.stat().st_size
        parts = _uploaded_parts(s3, cfg, bucket, key) if "-" in remote else None
        got = file_checksum(tmp, parts)
        if size != length or (remote and got != remote):
            raise StorageError(f"s3://{bucket}/{key} at {cfg.where} arrived damaged (size {size} vs {length}, "
                               f"SHA-256 {got} vs {remote}); download it again")
        tmp.replace(dest)
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, cfg, bucket, f"download s3://{bucket}/{key}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without a trailing slash)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise StorageError(f"{url!r} is not an S3 URL: write s3://<bucket>/<prefix>")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def publish(s3: Any, cfg: StorageConfig, paths: list[Path], url: str) -> dict[str, Any]:
    """Upload files and folders under ``url`` (each verified), then ``manifest.json`` listing them; the manifest.

    A folder keeps its own name as the first part of its keys (``models/classifier/model.pt`` is
    ``<prefix>/classifier/model.pt``). The manifest, uploaded last, lists each key with its size and
    SHA-256 (hex, and S3's checksum): a reader who finds the manifest finds every file it names.
    """
    import json

    from medrobust.utils import sha256_file

    bucket, prefix = split_url(url)
    files: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files += [(f, f"{path.name}/{f.relative_to(path).as_posix()}") for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            files.append((path, path.name))
        else:
            raise StorageError(f"{path} does not exist: nothing was published")
    entries = []
    for f, rel in files:
        key = f"{prefix}/{rel}" if prefix else rel
        checksum = upload(s3, cfg, f, bucket, key)
        entries.append({"key": key, "bytes": f.stat().st_size, "sha256": sha256_file(f),
                        "s3_checksum_sha256": checksum})
    manifest = {"url": f"s3://{bucket}/{prefix}", "files": entries}
    body = json.dumps(manifest, indent=2).encode()
    key = f"{prefix}/manifest.json" if prefix else "manifest.json"
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", ChecksumAlgorithm="SHA256")
    except Exception as exc:  # noqa: BLE001
        raise explain(exc, cfg, bucket, f"write s3://{bucket}/{key}") from None
    return manifest
