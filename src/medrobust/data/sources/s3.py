"""``s3``: DICOM (and PNG/JPEG/TIFF/BMP) objects under a prefix of an S3 bucket.

Works with AWS and any S3-compatible store (SeaweedFS, MinIO, Ceph...) through boto3; settings
live under ``data.s3`` in params.yaml (:class:`S3Config`)::

    data:
      source: s3
      s3:
        bucket: scans
        prefix: mammo/2024/              # read as a folder: "mammo/2024" and "mammo/2024/" are the same
        endpoint_url: http://127.0.0.1:8333   # empty: AWS
        region: us-east-1
        labels_key: mammo/labels.csv     # a CSV object in the bucket; empty: data.labels_csv (local)
        max_object_bytes: 536870912

Credentials never live in params.yaml: boto3's default chain finds them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` [/ ``AWS_SESSION_TOKEN``], ``AWS_PROFILE``, an instance role).

The prefix is listed once, page by page, when the source opens; objects are then downloaded one at
a time, only when ingest reads them, so memory holds one object at most. Like the folder source:
``ref`` is the key relative to the prefix, names with a PNG/JPEG/TIFF/BMP suffix are plain images
and everything else is read as DICOM (a stray object is quarantined, not ignored); "directory"
markers (keys ending in ``/``), dot-files and DICOMDIR indexes are skipped and listed in
``ingest.json``. The labels CSV is keyed by ``SOPInstanceUID`` (DICOM) or ``file`` = the key
relative to the prefix (plain images, with ``patient_id`` as the group).

Errors: refused credentials, a missing bucket, an unreachable endpoint, an empty prefix or a missing
labels object raise :class:`SourceError` naming the params.yaml key or environment variable to fix;
an object larger than ``max_object_bytes`` (by its listed size, never downloaded) is quarantined
as ``too_large``; an object that cannot be fetched (deleted after the listing...) as ``unreadable``.
An endpoint that stops answering mid-ingest (connection refused or timed out after botocore's
:data:`MAX_ATTEMPTS` attempts with backoff) is no single object's fault: ingest stops with a
:class:`SourceError` naming the endpoint, and writes no output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import Field

from medrobust.config import StrictModel
from medrobust.data import storage
from medrobust.data.sources.base import SOURCES, Item, LabelTable, Rejected, SourceError, decode_table
from medrobust.data.sources.folder import SKIP_NAMES, LabelledSource, kind_of
from medrobust.data.storage import AUTH_CODES, CREDENTIAL_ENV, StorageConfig, StorageError, error_code

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)

#: botocore's total attempts per request (standard retry mode: exponential backoff with jitter)
MAX_ATTEMPTS = 3


class S3Config(StrictModel):
    """``data.s3``: an S3 bucket (AWS or any S3-compatible store). Credentials come from the environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or a profile), never from here."""

    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""             # empty: AWS; e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO
    region: str = "us-east-1"
    labels_key: str = ""               # a labels CSV inside the bucket; empty: data.labels_csv (local)
    max_object_bytes: int = Field(512 * 1024 * 1024, ge=1)


@dataclass(frozen=True)
class S3Object:
    """One listed object: its full key, the key relative to the prefix, and its size in bytes.

    Attributes:
        key: the object's full key.
        ref: the key relative to the prefix (the item's ``ref`` and labels-table ``file``).
        size: the size the listing reported, in bytes.
    """

    key: str
    ref: str
    size: int


def _is_skipped(ref: str) -> bool:
    """Directory markers, dot-files and DICOMDIR indexes are not images."""
    name = PurePosixPath(ref).name
    return ref.endswith("/") or name in SKIP_NAMES or name.startswith(".")


@SOURCES.register("s3", dicom="some")
class S3Source(LabelledSource):
    """Objects under ``data.s3.prefix`` of ``data.s3.bucket``; labels from a CSV object or a local CSV.

    Args:
        data: the ``data`` section; ``data.s3`` and, without ``labels_key``, ``data.labels_csv``.
        labels_csv: overrides ``data.labels_csv`` (used only when ``data.s3.labels_key`` is empty).

    Attributes:
        objects: the listed objects to deliver, sorted by key.
        skipped: refs of directory markers, dot-files and DICOMDIR indexes, sorted.
        client: the boto3 S3 client; :meth:`close` closes it.

    Raises:
        SourceError: bucket/prefix/endpoint/credentials/labels problems (the message names the
            params.yaml key or environment variable to fix).
    """

    name = "s3"
    #: keys per ListObjectsV2 request (the S3 maximum; tests lower it to exercise pagination)
    page_size: int = 1000

    def __init__(self, data: DataConfig, labels_csv: str | Path | None = None, **_: Any) -> None:
        """List the prefix and load the labels table (no image is downloaded yet); see the class docstring."""
        cfg = data.s3
        if not cfg.bucket:
            raise SourceError("data.s3.bucket is empty: set data.s3.bucket in params.yaml to the bucket that "
                              "holds the images")
        self.bucket = cfg.bucket
        self.prefix = cfg.prefix.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.endpoint = cfg.endpoint_url or ""
        self.max_bytes = int(cfg.max_object_bytes)
        self.labels_key = cfg.labels_key.lstrip("/")
        self.labels_encoding = data.labels_encoding
        self.where = (f"bucket {self.bucket!r} at "
                      f"{self.endpoint or f'the AWS default endpoint (region {cfg.region})'}")
        self.client = self._client(cfg)
        try:
            self.objects, self.skipped = self._list()
            if self.labels_key:
                self.table = LabelTable.from_text(self._labels_text(), f"s3://{self.bucket}/{self.labels_key}")
            else:
                self.table = LabelTable.from_path(labels_csv or data.labels_csv,
                                                  setting="data.labels_csv (or data.s3.labels_key)",
                                                  encoding=data.labels_encoding)
        except BaseException:
            self.client.close()
            raise
        log.info("s3: %d objects under s3://%s/%s (%d skipped)", len(self.objects), self.bucket, self.prefix,
                 len(self.skipped))

    # ------------------------------------------------------------------------------------------------
    def _client(self, cfg: Any) -> Any:
        """A boto3 S3 client (:func:`medrobust.data.storage.client`: botocore's standard retries, timeouts)."""
        try:
            return storage.client(StorageConfig(endpoint_url=self.endpoint, region=cfg.region,
                                                max_attempts=MAX_ATTEMPTS))
        except StorageError as exc:
            raise SourceError(f"data.s3.endpoint_url: {exc}; set it in params.yaml") from None

    def _explain(self, exc: Exception, action: str) -> SourceError:
        """A :class:`SourceError` for a failure that concerns the whole bucket."""
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        code, status = error_code(exc)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return SourceError(f"no S3 credentials found for {self.where}: set {CREDENTIAL_ENV} in the "
                               "environment (credentials are never read from params.yaml)")
        if isinstance(exc, BotoConnectionError):
            # botocore's text quotes the URL, object key included (a source path): name the error only
            return SourceError(f"cannot reach the S3 endpoint {self.endpoint or '(AWS default)'} while trying to "
                               f"{action} ({type(exc).__name__}); check data.s3.endpoint_url in params.yaml and "
                               "that the server is running")
        if code in AUTH_CODES or status == 403:
            return SourceError(
                f"S3 refused the credentials for {self.where} ({code or status} while trying to {action}): "
                f"set {CREDENTIAL_ENV} in the environment to a key that may list and read the bucket"
            )
        if code == "NoSuchBucket" or (status == 404 and action.startswith("list")):
            return SourceError(f"S3 bucket {self.bucket!r} does not exist at "
                               f"{self.endpoint or 'AWS'}: check data.s3.bucket (and data.s3.endpoint_url) "
                               "in params.yaml")
        return SourceError(f"S3 error while trying to {action} in {self.where}: {exc}; check data.s3 in "
                           "params.yaml")

    def _list(self) -> tuple[list[S3Object], list[str]]:
        """All objects under the prefix (every page), and the skipped refs; both sorted by key."""
        from botocore.exceptions import BotoCoreError, ClientError

        objects: list[S3Object] = []
        skipped: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix,
                                   PaginationConfig={"PageSize": self.page_size})
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    key = entry["Key"]
                    ref = key[len(self.prefix):]
                    if not ref or key == self.labels_key:
                        continue
                    if _is_skipped(ref):
                        skipped.append(ref)
                    else:
                        objects.append(S3Object(key=key, ref=ref, size=int(entry.get("Size", 0))))
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, f"list s3://{self.bucket}/{self.prefix}") from None
        if not objects:
            raise SourceError(
                f"no objects under s3://{self.bucket}/{self.prefix} ({self.where}"
                f"{f'; {len(skipped)} skipped: directory markers, dot-files, DICOMDIR' if skipped else ''}): "
                "check data.s3.prefix and data.s3.bucket in params.yaml"
            )
        objects.sort(key=lambda o: o.key)
        return objects, sorted(skipped)

    def _labels_text(self) -> str:
        """The labels CSV object as text (``data.labels_encoding``; auto: its byte-order mark, else UTF-8)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.labels_key)
            body = resp["Body"]
            try:
                if int(resp.get("ContentLength", 0)) > self.max_bytes:
                    raise SourceError(f"the labels CSV s3://{self.bucket}/{self.labels_key} is larger than "
                                      f"data.s3.max_object_bytes ({self.max_bytes}); check data.s3.labels_key")
                raw = body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            code, status = error_code(exc)
            if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
                raise SourceError(f"labels CSV s3://{self.bucket}/{self.labels_key} not found: set "
                                  "data.s3.labels_key in params.yaml to the key of the labels CSV (or leave it "
                                  "empty to use the local data.labels_csv)") from None
            raise self._explain(exc, f"read the labels CSV {self.labels_key}") from None
        return decode_table(raw, f"s3://{self.bucket}/{self.labels_key}", self.labels_encoding)

    def _reader(self, obj: S3Object) -> Callable[[], bytes]:
        """``read()`` for one object: size check first (no download), then one GetObject."""

        def read() -> bytes:
            from botocore.exceptions import BotoCoreError, ClientError
            from botocore.exceptions import ConnectionError as BotoConnectionError

            if obj.size > self.max_bytes:
                raise Rejected("too_large", f"the object has {obj.size} bytes, more than data.s3.max_object_bytes "
                                            f"({self.max_bytes}); not downloaded")
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=obj.key)
                body = resp["Body"]
                try:
                    if int(resp.get("ContentLength", 0)) > self.max_bytes:  # replaced since the listing
                        raise Rejected("too_large", f"the object now has {resp['ContentLength']} bytes, more than "
                                                    f"data.s3.max_object_bytes ({self.max_bytes})")
                    return body.read()
                finally:
                    body.close()
            except BotoConnectionError as exc:  # the endpoint is gone, not this object: stop, after botocore's retries
                raise self._explain(exc, f"fetch an object (after {MAX_ATTEMPTS} attempts with backoff)") from None
            except (ClientError, BotoCoreError, OSError) as exc:
                code, status = error_code(exc)
                why = code or (f"HTTP {status}" if status else type(exc).__name__)
                hint = " (deleted after the listing?)" if code in {"NoSuchKey", "404"} else ""
                raise Rejected("unreadable", f"could not fetch the object: {why}{hint}") from None

        return read

    def items(self) -> Iterator[Item]:
        """One item per listed object; each is downloaded only when its ``read()`` is called."""
        for obj in self.objects:
            kind = kind_of(obj.ref)
            yield Item(ref=obj.ref, kind=kind, read=self._reader(obj),  # type: ignore[arg-type]
                       group=self.group_of(obj.ref) if kind == "image" else None,
                       uid=obj.ref if kind == "image" else None)

    def close(self) -> None:
        """Close the S3 client."""
        self.client.close()


__all__ = ["S3Object", "S3Source"]
