"""PHI audit: look for the source data's patient and instance identifiers in pipeline outputs.

Two steps:

1. :func:`collect_identifiers` reads the DICOM headers of the *sources* (``stop_before_pixels``)
   and gathers the identifying values per kind (:data:`IDENTIFYING_KEYWORDS`), optionally also
   the values of named columns of CSV files among the sources (a labels CSV's ``SOPInstanceUID``
   column holds UIDs; ``patient_id`` holds patient IDs).
2. :func:`scan` searches every file under the *output* paths — text and binary alike: CSVs,
   JSON, logs, ``.npy`` shards, sqlite databases such as ``mlflow.db`` (text is stored as UTF-8
   inside its pages), model files, artifact folders — for each identifier as bytes. Files are
   read in chunks with an overlap of the longest identifier, so large files stream and a value
   split across two chunks is still found. ZIP archives (``.pt``, ``.npz``, ``.zip``) and gzip
   files are also searched decompressed.

What counts as an identifier (the *trivial-value rule*): a value is dropped when, stripped of
spaces and ``^``, it is shorter than :data:`MIN_LENGTH` (4) characters, is purely numeric (digits,
``.``, ``-``) and has fewer than :data:`MIN_NUMERIC_LENGTH` (6) characters (``4900`` would match
inside any float printed in a CSV), consists of one repeated character (``0000``), or is a generic
placeholder (:data:`PLACEHOLDERS`, case-insensitive, such as ``ANONYMOUS``). Registered DICOM UIDs (SOP classes, transfer syntaxes) are not collected.
Person names (VR PN, ``Family^Given^Middle^Prefix^Suffix``) are searched as written, with ``^``
replaced by spaces, as ``Given Family`` and ``Family, Given``, and each component is searched on
its own (kind ``<Keyword>.component``), all under the same trivial-value rule. Dates are only
collected for Patient's Birth Date: study dates are shared by many patients and would match
unrelated numbers.

A finding names the file, the byte offset, the identifier's *kind* and a salted SHA-256 prefix of
the value (the salt is in the report, so whoever holds the source can tell which value it was).
The value itself is never printed, logged or written.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import secrets
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: DICOM attributes whose values identify a patient, a visit, a person, a site or an instance.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientID", "PatientName", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers",
    "MedicalRecordLocator", "IssuerOfPatientID", "AccessionNumber", "StudyID", "AdmissionID",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest", "RequestedProcedureID",
    "PerformedProcedureStepID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "MediaStorageSOPInstanceUID", "FrameOfReferenceUID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StationName",
    "DeviceSerialNumber",
)

#: Header kinds merged under one name (the file meta repeats the SOP Instance UID).
_KIND_ALIASES = {"MediaStorageSOPInstanceUID": "SOPInstanceUID"}

#: CSV columns read by default when a CSV file is among the sources.
DEFAULT_CSV_COLUMNS: tuple[str, ...] = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
                                        "patient_id", "AccessionNumber")

MIN_LENGTH = 4
MIN_NUMERIC_LENGTH = 6

#: Generic values that identify nobody (compared case-insensitively, spaces and ``^`` removed).
PLACEHOLDERS = frozenset({
    "anonymous", "anonymized", "anonymised", "anon", "unknown", "none", "null", "nan", "n/a", "test",
    "patient", "removed", "redacted", "deidentified", "de-identified", "dummy", "empty", "noname",
    "no name", "other", "yes", "true", "false",
})

CHUNK_SIZE = 1 << 20
HASH_PREFIX = 12
#: Suffixes never tried as DICOM (everything else is: PACS exports often have no or odd suffixes).
_NOT_DICOM = {".csv", ".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".npz",
              ".gz", ".zip", ".yaml", ".yml", ".py", ".log", ".html"}
_PERSON_VR = "PN"


@dataclass(frozen=True)
class Finding:
    """One occurrence of an identifier: where, which kind, and a salted hash prefix of the value."""

    file: str
    offset: int
    kind: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.file}@{self.offset}: {self.kind} (sha256 {self.fingerprint})"


@dataclass
class ScanResult:
    """What :func:`scan` looked at and found (``findings`` is also its return value)."""

    findings: list[Finding]
    files_scanned: int
    bytes_scanned: int
    salt: str
    unreadable: list[str]


def is_trivial(value: str) -> bool:
    """True for values the audit does not search (see the module docstring's trivial-value rule)."""
    core = value.replace("^", "").strip()
    numeric = core.replace(".", "").replace("-", "").isdigit()
    return (len(core) < MIN_LENGTH or (numeric and len(core) < MIN_NUMERIC_LENGTH) or len(set(core)) == 1
            or core.lower() in PLACEHOLDERS or core.replace(" ", "").lower() in PLACEHOLDERS)


def name_variants(value: str) -> tuple[set[str], set[str]]:
    """(whole-name variants, components) of a DICOM person name ``Family^Given^Middle^Prefix^Suffix``."""
    value = value.strip()
    parts = [p.strip() for p in value.split("^")]
    nonempty = [p for p in parts if p]
    whole = {value, value.rstrip("^"), " ".join(nonempty)}
    if len(parts) >= 2 and parts[0] and parts[1]:
        whole |= {f"{parts[1]} {parts[0]}", f"{parts[0]}, {parts[1]}"}
    components = {p for p in nonempty if len(nonempty) > 1}
    return {w for w in whole if w}, components


def _add(out: dict[str, set[str]], kind: str, value: Any, is_name: bool = False) -> None:
    from pydicom.multival import MultiValue

    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    for v in values:
        s = str(v if v is not None else "").strip().strip("\0").strip()
        if not s:
            continue
        if is_name:
            whole, components = name_variants(s)
            kept = {w for w in whole if not is_trivial(w)}
            if kept:
                out.setdefault(kind, set()).update(kept)
            comps = {c for c in components if not is_trivial(c)}
            if comps:
                out.setdefault(f"{kind}.component", set()).update(comps)
        elif not is_trivial(s):
            out.setdefault(kind, set()).add(s)


def _walk(sources: Iterable[Path]) -> Iterator[Path]:
    for src in sources:
        src = Path(src)
        if src.is_file():
            yield src
        elif src.is_dir():
            yield from (p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink())
        else:
            raise FileNotFoundError(f"audit source not found: {src} (pass a folder or file of source data)")


def _dicom_identifiers(path: Path, out: dict[str, set[str]]) -> bool:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID_dictionary

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=path.suffix.lower() in (".dcm", ".dicom"))
            elems = list(ds.file_meta.iterall()) if getattr(ds, "file_meta", None) else []
            elems += list(ds.iterall())
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return False
    except Exception:  # noqa: BLE001 - pydicom raises many types on damaged headers
        log.debug("audit: could not read %s as DICOM", path)
        return False
    wanted = set(IDENTIFYING_KEYWORDS)
    for elem in elems:
        if elem.keyword not in wanted or elem.VR == "SQ":
            continue
        value = elem.value
        if elem.VR == "UI" and str(value) in UID_dictionary:
            continue
        _add(out, _KIND_ALIASES.get(elem.keyword, elem.keyword), value, is_name=elem.VR == _PERSON_VR)
    return True


def _csv_identifiers(path: Path, columns: Sequence[str], out: dict[str, set[str]]) -> None:
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            reader = csv.DictReader(fh)
            present = [c for c in columns if c in (reader.fieldnames or [])]
            if not present:
                return
            for row in reader:
                for col in present:
                    _add(out, f"csv:{col}", row.get(col))
    except (OSError, csv.Error) as exc:
        log.warning("audit: could not read CSV %s: %s", path, exc)


def collect_identifiers(sources: list[Path], csv_columns: Sequence[str] = DEFAULT_CSV_COLUMNS) -> dict[str, set[str]]:
    """Identifying values of the source data, per kind.

    Args:
        sources: folders (searched recursively) or files of *input* data: DICOM files (read header
            only; any file that is not obviously something else is tried) and CSV files.
        csv_columns: columns whose values are identifiers when a source CSV has them (kind
            ``csv:<column>``); pass ``()`` to ignore CSVs.

    Returns:
        ``{kind: {value, ...}}`` without trivial values (see :func:`is_trivial`).

    Raises:
        FileNotFoundError: a source does not exist.
    """
    out: dict[str, set[str]] = {}
    n_dicom = 0
    for path in _walk(sources):
        suffix = path.suffix.lower()
        if suffix == ".csv":
            if csv_columns:
                _csv_identifiers(path, csv_columns, out)
        elif suffix not in _NOT_DICOM and _dicom_identifiers(path, out):
            n_dicom += 1
    log.info("audit: %d identifying values of %d kinds from %d DICOM files", sum(map(len, out.values())),
             len(out), n_dicom)
    return out


def fingerprint(value: str, salt: str) -> str:
    """The salted SHA-256 prefix that stands for ``value`` in findings and reports."""
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:HASH_PREFIX]


def _needles(identifiers: Mapping[str, Iterable[str]]) -> list[tuple[bytes, str, str]]:
    """(bytes to look for, kind, value) for every identifier; one kind per value (the first)."""
    seen: dict[bytes, tuple[str, str]] = {}
    for kind in sorted(identifiers):
        for value in sorted(identifiers[kind]):
            b = value.encode("utf-8")
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
        for needle, kind, value in needles:
            i = window.find(needle)
            while i >= 0:
                key = (needle, pos + i)
                if key not in seen:
                    seen.add(key)
                    found.append(Finding(label, pos + i, kind, fingerprint(value, salt)))
                i = window.find(needle, i + 1)
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
    """Like :func:`scan`, returning counts, the salt and unreadable files as well."""
    salt = salt or secrets.token_hex(8)
    needles = _needles(identifiers)
    if not needles:
        raise ValueError("no identifiers to search for: collect_identifiers found nothing in the sources; "
                         "check the --source paths (they must hold the input DICOM files)")
    found: list[Finding] = []
    files = n_bytes = 0
    unreadable: list[str] = []
    for path in _walk(paths):
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
    """A JSON-ready report: counts per kind, and the findings without any identifier value."""
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


def audit(sources: list[Path], outputs: list[Path], csv_columns: Sequence[str] = DEFAULT_CSV_COLUMNS,
          chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    """Collect identifiers from ``sources``, scan ``outputs``, return :func:`report`'s dict.

    Raises:
        ValueError: an output path lies inside a source (the inputs would match themselves), or the
            sources hold no identifier.
    """
    for out in outputs:
        for src in sources:
            o, s = Path(out).resolve(), Path(src).resolve()
            if o == s or s in o.parents:
                raise ValueError(f"output path {out} is inside source {src}: the audit searches outputs for the "
                                 "sources' identifiers; pass the input data with --source and only outputs as paths")
    identifiers = collect_identifiers(sources, csv_columns)
    return report(scan_result(outputs, identifiers, chunk_size=chunk_size), identifiers)


__all__ = ["Finding", "IDENTIFYING_KEYWORDS", "PLACEHOLDERS", "ScanResult", "audit", "collect_identifiers",
           "fingerprint", "is_trivial", "name_variants", "report", "scan", "scan_result"]
