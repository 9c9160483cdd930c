"""Step 1 of the PHI audit: the identifying values of the *source* data, per kind.

See :mod:`medrobust.data.audit` for what counts as an identifier (the trivial-value rule) and how
person names are expanded.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
#: Suffixes never tried as DICOM (everything else is: PACS exports often have no or odd suffixes).
_NOT_DICOM = {".csv", ".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".npz",
              ".gz", ".zip", ".yaml", ".yml", ".py", ".log", ".html"}
_PERSON_VR = "PN"


def is_trivial(value: str) -> bool:
    """True for values the audit does not search (see the module docstring's trivial-value rule).

    Args:
        value: a candidate identifier as read from a header or CSV.

    Returns:
        Whether ``value`` is too short, a short number, one repeated character or a placeholder.

    Example:
        >>> is_trivial("ANONYMOUS"), is_trivial("4900"), is_trivial("0000000"), is_trivial("1.2.3.4.5.6")
        (True, True, True, False)
    """
    core = value.replace("^", "").strip()
    numeric = core.replace(".", "").replace("-", "").isdigit()
    return (len(core) < MIN_LENGTH or (numeric and len(core) < MIN_NUMERIC_LENGTH) or len(set(core)) == 1
            or core.lower() in PLACEHOLDERS or core.replace(" ", "").lower() in PLACEHOLDERS)


#: how exports join name components in file and folder names
NAME_SEPARATORS = (" ", "_", "-")


def name_variants(value: str) -> tuple[set[str], set[str]]:
    """(whole-name variants, components) of a DICOM person name ``Family^Given^Middle^Prefix^Suffix``.

    Args:
        value: the name as stored (VR PN).

    Returns:
        The name as written, with trailing ``^`` stripped, with its components joined by a space, ``_``
        or ``-`` (how PACS exports name folders: ``GARCIA_LUCIA_19700101/``), and (when family and given
        names are both present) given name first with the same separators and ``Family, Given``; and the
        non-empty components, only when there are at least two. Trivial values are not filtered here.
        The scan matches all of them case-insensitively.

    Example:
        >>> whole, parts = name_variants("Family^Given")
        >>> sorted(whole)[:4], sorted(parts)
        (['Family Given', 'Family, Given', 'Family-Given', 'Family^Given'], ['Family', 'Given'])
    """
    value = value.strip()
    parts = [p.strip() for p in value.split("^")]
    nonempty = [p for p in parts if p]
    whole = {value, value.rstrip("^"), *(sep.join(nonempty) for sep in NAME_SEPARATORS)}
    if len(parts) >= 2 and parts[0] and parts[1]:
        whole |= {*(sep.join((parts[1], parts[0])) for sep in NAME_SEPARATORS), f"{parts[0]}, {parts[1]}"}
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


def walk_files(sources: Iterable[Path]) -> Iterator[Path]:
    """Every file of ``sources``: a file as it is, a folder recursively (sorted; symbolic links are skipped).

    Args:
        sources: files and folders.

    Yields:
        The files.

    Raises:
        FileNotFoundError: a path does not exist.
    """
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
    for path in walk_files(sources):
        suffix = path.suffix.lower()
        if suffix == ".csv":
            if csv_columns:
                _csv_identifiers(path, csv_columns, out)
        elif suffix not in _NOT_DICOM and _dicom_identifiers(path, out):
            n_dicom += 1
    log.info("audit: %d identifying values of %d kinds from %d DICOM files", sum(map(len, out.values())),
             len(out), n_dicom)
    return out


__all__ = ["DEFAULT_CSV_COLUMNS", "IDENTIFYING_KEYWORDS", "MIN_LENGTH", "MIN_NUMERIC_LENGTH", "PLACEHOLDERS",
           "collect_identifiers", "is_trivial", "name_variants", "walk_files"]
