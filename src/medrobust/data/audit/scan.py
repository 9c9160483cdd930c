"""Step 2 of the PHI audit: search every output file — text and binary, archives decompressed — for the
identifiers, and report findings by kind and salted hash, never by value."""

from __future__ import annotations

import gzip
import hashlib
import logging
import secrets
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from medrobust.data.audit.identifiers import walk_files

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
HASH_PREFIX = 12


@dataclass(frozen=True)
class Finding:
    """One occurrence of an identifier: where, which kind, and a salted hash prefix of the value.

    Attributes:
        file: the file's path; a member of an archive is ``<archive>!<member>`` (``<file>!`` for gzip).
        offset: the byte offset of the occurrence (in the decompressed stream for archive members).
        kind: the identifier's kind (a DICOM keyword, ``<Keyword>.component`` or ``csv:<column>``).
        fingerprint: :func:`fingerprint` of the value; the value itself is never kept.
    """

    file: str
    offset: int
    kind: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.file}@{self.offset}: {self.kind} (sha256 {self.fingerprint})"


@dataclass
class ScanResult:
    """What :func:`scan` looked at and found (``findings`` is also its return value).

    Attributes:
        findings: every occurrence found, in scan order.
        files_scanned: files read completely (archive members are counted with their file).
        bytes_scanned: bytes searched, raw and decompressed together.
        salt: the salt of the findings' fingerprints.
        unreadable: paths of files that could not be read (and were not counted as scanned).
    """

    findings: list[Finding]
    files_scanned: int
    bytes_scanned: int
    salt: str
    unreadable: list[str]


def fingerprint(value: str, salt: str) -> str:
    """The salted SHA-256 prefix that stands for ``value`` in findings and reports.

    Args:
        value: the identifier.
        salt: the scan's salt (in the report, so whoever holds the source can recompute it).

    Returns:
        The first :data:`HASH_PREFIX` hex digits of ``sha256(salt + ":" + value)``.
    """
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:HASH_PREFIX]


def _folds(kind: str) -> bool:
    """Whether a kind is matched case-insensitively: every kind but single name components.

    A lone component ("Chen") folded to lower case turns up by chance in base64 image data (a report's
    embedded PNG); whole names, IDs and UIDs are long or specific enough not to.
    """
    return not kind.endswith(".component")


def _needles(identifiers: Mapping[str, Iterable[str]]) -> list[tuple[bytes, str, str]]:
    """(bytes to look for, kind, value) for every identifier (lower-cased where :func:`_folds`); one kind per value."""
    seen: dict[bytes, tuple[str, str]] = {}
    for kind in sorted(identifiers):
        for value in sorted(identifiers[kind]):
            b = value.encode("utf-8")
            b = b.lower() if _folds(kind) else b
            if b and b not in seen:
                seen[b] = (kind, value)
    return [(b, k, v) for b, (k, v) in seen.items()]


def _search_stream(fh: IO[bytes], needles: list[tuple[bytes, str, str]], label: str, salt: str,
                   chunk_size: int, found: list[Finding]) -> int:
    """Search one byte stream chunk by chunk; returns the number of bytes read."""
    overlap = max((len(n) for n, _, _ in needles), default=1) - 1
    tail = b""
    pos = 0  # absolute offset of the first byte of ``tail + chunk``
    seen: set[tuple[bytes, int]] = set()
    total = 0
    while True:
        chunk = fh.read(chunk_size)
        if not chunk:
            break
        total += len(chunk)
        window = tail + chunk
        folded = window.lower()  # ASCII case folded, byte offsets kept: CHEN^MEI matches Chen^Mei
        for needle, kind, value in needles:
            hay = folded if _folds(kind) else window
            i = hay.find(needle)
            while i >= 0:
                key = (needle, pos + i)
                if key not in seen:
                    seen.add(key)
                    found.append(Finding(label, pos + i, kind, fingerprint(value, salt)))
                i = hay.find(needle, i + 1)
        keep = min(overlap, len(window))
        tail = window[len(window) - keep:] if keep else b""
        pos += len(window) - len(tail)
    return total


def _open_nested(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Decompressed members of a ZIP or gzip file (searched in addition to the raw bytes)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.compress_type != zipfile.ZIP_STORED:
                        with zf.open(info) as member:
                            yield f"{path}!{info.filename}", member  # type: ignore[misc]
        except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
            log.warning("audit: could not open archive %s: %s", path, exc)
    elif path.suffix == ".gz":
        with gzip.open(path, "rb") as member:
            yield f"{path}!", member  # type: ignore[misc]


def scan_result(paths: list[Path], identifiers: Mapping[str, Iterable[str]], salt: str | None = None,
                chunk_size: int = CHUNK_SIZE) -> ScanResult:
    """Like :func:`scan`, returning counts, the salt and unreadable files as well.

    A file that cannot be read is logged and listed in :attr:`ScanResult.unreadable`, and the scan goes on.

    Args:
        paths: output folders or files (recursively).
        identifiers: ``{kind: values}``, e.g. from :func:`collect_identifiers`.
        salt: for the findings' fingerprints (default: random per call).
        chunk_size: bytes read at a time; chunks overlap by the longest identifier minus one.

    Returns:
        The findings, with the number of files and bytes scanned, the salt and the unreadable files.

    Raises:
        ValueError: ``identifiers`` is empty (a scan for nothing would pass vacuously).
        FileNotFoundError: a path does not exist.
    """
    salt = salt or secrets.token_hex(8)
    needles = _needles(identifiers)
    if not needles:
        raise ValueError("no identifiers to search for: collect_identifiers found nothing in the sources; "
                         "check the --source paths (they must hold the input DICOM files)")
    found: list[Finding] = []
    files = n_bytes = 0
    unreadable: list[str] = []
    for path in walk_files(paths):
        try:
            with open(path, "rb") as fh:
                n_bytes += _search_stream(fh, needles, str(path), salt, chunk_size, found)
            for label, member in _open_nested(path):
                n_bytes += _search_stream(member, needles, label, salt, chunk_size, found)
        except (OSError, EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
            log.warning("audit: could not read %s: %s", path, exc)
            unreadable.append(str(path))
            continue
        files += 1
    for f in found:
        log.error("audit: %s", f)
    log.info("audit: %d files (%.1f MB) scanned for %d values, %d findings", files, n_bytes / 1e6, len(needles),
             len(found))
    return ScanResult(found, files, n_bytes, salt, unreadable)


def scan(paths: list[Path], identifiers: Mapping[str, Iterable[str]], salt: str | None = None,
         chunk_size: int = CHUNK_SIZE) -> list[Finding]:
    """Search every file under ``paths`` for the identifiers (UTF-8 bytes, case-sensitive).

    Args:
        paths: output folders or files (recursively).
        identifiers: ``{kind: values}``, e.g. from :func:`collect_identifiers`.
        salt: for the findings' fingerprints (default: random per call).
        chunk_size: bytes read at a time; chunks overlap by the longest identifier minus one.

    Returns:
        One :class:`Finding` per occurrence (file, byte offset, kind, fingerprint); empty if clean.

    Raises:
        ValueError: ``identifiers`` is empty (a scan for nothing would pass vacuously).
        FileNotFoundError: a path does not exist.
    """
    return scan_result(paths, identifiers, salt, chunk_size).findings


def report(result: ScanResult, identifiers: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """A JSON-ready report: counts per kind, and the findings without any identifier value.

    Args:
        result: what :func:`scan_result` returned.
        identifiers: the identifiers searched for; only their number per kind enters the report.

    Returns:
        ``clean``, ``files_scanned``, ``bytes_scanned``, ``identifiers_per_kind``, ``findings_per_kind``,
        ``fingerprint`` (how fingerprints are made), ``salt``, ``unreadable`` and ``findings``
        (file, offset, kind, fingerprint each).
    """
    return {
        "clean": not result.findings,
        "files_scanned": result.files_scanned,
        "bytes_scanned": result.bytes_scanned,
        "identifiers_per_kind": {k: len(set(v)) for k, v in sorted(identifiers.items())},
        "findings_per_kind": dict(Counter(f.kind for f in result.findings)),
        "fingerprint": f"sha256(salt + ':' + value)[:{HASH_PREFIX}]",
        "salt": result.salt,
        "unreadable": result.unreadable,
        "findings": [asdict(f) for f in result.findings],
    }


__all__ = ["CHUNK_SIZE", "HASH_PREFIX", "Finding", "ScanResult", "fingerprint", "report", "scan", "scan_result"]
