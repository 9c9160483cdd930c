"""What to ask the PACS for: ``data.pacs.filters`` per query level, and the instances found.

Both protocols (:mod:`.dicomweb`, :mod:`.dimse`) query study -> series -> instance with the keys
:func:`split_filters` assigns to each level, and :func:`ordinal_refs` gives every instance found a
``ref`` that identifies no one (``pacs:study-3/series-1/ima-<pseudonym>``).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from medrobust.data.deid import pseudonym
from medrobust.data.sources.base import SourceError

log = logging.getLogger(__name__)

#: Filter keys that select series or instances; every other key is sent with the study query.
SERIES_KEYS = frozenset({
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
    "BodyPartExamined", "ProtocolName", "Laterality", "PerformedProcedureStepStartDate", "Manufacturer",
})
INSTANCE_KEYS = frozenset({
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImageType", "ContentDate", "AcquisitionDate",
    "ImageLaterality", "ViewPosition",
})
#: Filter keys whose values identify people: never shown in a message.
IDENTIFYING_KEYS = frozenset({"PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                              "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"})

@dataclass(frozen=True)
class PacsInstance:
    """One instance found by the query. UIDs are identifiers: used for retrieval, never shown.

    Attributes:
        study: StudyInstanceUID.
        series: SeriesInstanceUID.
        sop: SOPInstanceUID.
        sop_class: SOPClassUID (``""`` when the PACS did not report it).
        ref: ``pacs:study-<n>/series-<m>/<image pseudonym>``, identifying no one.
    """

    study: str
    series: str
    sop: str
    sop_class: str
    ref: str


def split_filters(filters: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``data.pacs.filters`` -> (study, series, instance) query keys.

    Keys in :data:`SERIES_KEYS` go to the series query, keys in :data:`INSTANCE_KEYS` to the instance
    query, all others to the study query.

    Args:
        filters: DICOM keyword -> value (None becomes ``""``, a universal match); may be empty.

    Returns:
        (study keys, series keys, instance keys), values as strings.

    Raises:
        SourceError: a key is not a DICOM keyword.
    """
    from pydicom.datadict import tag_for_keyword

    study: dict[str, str] = {}
    series: dict[str, str] = {}
    instance: dict[str, str] = {}
    for key, value in (filters or {}).items():
        if tag_for_keyword(str(key)) is None:
            raise SourceError(
                f"data.pacs.filters: {key!r} is not a DICOM keyword; use keywords such as Modality, StudyDate, "
                "ModalitiesInStudy, PatientID, AccessionNumber, BodyPartExamined"
            )
        target = series if key in SERIES_KEYS else instance if key in INSTANCE_KEYS else study
        target[str(key)] = "" if value is None else str(value)
    return study, series, instance


def describe_filters(filters: dict[str, Any]) -> str:
    """The filters for a message, with identifying values masked.

    Args:
        filters: DICOM keyword -> value.

    Returns:
        ``key=value, ...``, values of :data:`IDENTIFYING_KEYS` shown as ``<set>``; ``no filters`` when empty.
    """
    if not filters:
        return "no filters"
    return ", ".join(f"{k}={'<set>' if k in IDENTIFYING_KEYS else v}" for k, v in filters.items())


def safe_url(url: str) -> str:
    """``url`` without user:password@ (never shown).

    Args:
        url: an absolute URL.

    Returns:
        ``scheme://host[:port]/path``: credentials, query and fragment dropped.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost`` or a loopback IP address (host names are not resolved).

    Args:
        host: a host name or IP address (``data.pacs.host``).

    Returns:
        True for ``localhost``, ``127.0.0.0/8`` and ``::1``; False for anything else.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def quiet_identifier_loggers() -> None:
    """urllib3 logs request URLs (with UIDs) at DEBUG, dicomweb-client UIDs at INFO (URLs at DEBUG),
    pynetdicom query identifiers at INFO: raise them to WARNING unless they were configured."""
    for name in ("urllib3.connectionpool", "dicomweb_client", "pynetdicom"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def ordinal_refs(rows: list[tuple[str, str, str, str, str]], key: bytes) -> list[PacsInstance]:
    """Sort (study, series, instance-number, sop, sop_class) rows and give each a non-identifying ref.

    Duplicate rows are dropped. Rows are sorted by study UID, series UID, InstanceNumber (numerically;
    non-numeric ones last) and SOP instance UID; studies are numbered from 1, series from 1 within
    their study.

    Args:
        rows: what the client's ``find`` returned.
        key: the pseudonymisation key (:func:`~medrobust.data.deid.load_key`).

    Returns:
        One instance per distinct row, in that order, with ref
        ``pacs:study-<n>/series-<m>/<pseudonym(key, "image", SOPInstanceUID)>``.
    """
    def inst_no(v: str) -> tuple[int, str]:
        return (int(v), "") if v.strip().lstrip("-").isdigit() else (1 << 31, v)

    rows = sorted(set(rows), key=lambda r: (r[0], r[1], inst_no(r[2]), r[3]))
    studies: dict[str, int] = {}
    series: dict[tuple[str, str], int] = {}
    per_study: dict[str, int] = {}
    out = []
    for study, ser, _, sop, sop_class in rows:
        n = studies.setdefault(study, len(studies) + 1)
        if (study, ser) not in series:
            per_study[study] = series[(study, ser)] = per_study.get(study, 0) + 1
        m = series[(study, ser)]
        out.append(PacsInstance(study, ser, sop, sop_class,
                                ref=f"pacs:study-{n}/series-{m}/{pseudonym(key, 'image', sop)}"))
    return out


# --------------------------------------------------------------------------------------------------