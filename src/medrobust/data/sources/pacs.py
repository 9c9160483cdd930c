"""``pacs``: DICOM instances from a PACS, by DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET).

Settings live in ``data.pacs`` (:class:`~medrobust.config.PacsConfig`); labels come from
``data.labels_csv``, keyed by ``SOPInstanceUID`` exactly as for ``dicom_folder``, so a folder and a
PACS holding the same files give the same dataset.

Query. ``data.pacs.filters`` holds DICOM keywords and values (``{Modality: MG, StudyDate:
20200101-20201231}``). Each key is sent at the level it belongs to: series attributes such as
``Modality`` or ``BodyPartExamined`` filter series, instance attributes such as ``SOPClassUID``
filter instances, and everything else (``StudyDate``, ``PatientID``, ``ModalitiesInStudy``,
``AccessionNumber``...) filters studies. The whole hierarchy (study -> series -> instance) is
queried when the source is opened, so refused credentials, an unreachable server or a filter that
matches nothing stop ingest before anything is written.

DICOMweb (``protocol: dicomweb``, ``url`` = the service root, e.g. ``http://host:8042/dicom-web``):
QIDO-RS ``GET /studies``, ``/studies/{uid}/series``, ``.../series/{uid}/instances`` (JSON, paged
with ``limit``/``offset``), then WADO-RS ``GET .../instances/{uid}`` with
``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` so the object arrives in
its original transfer syntax. Each instance is fetched only when its item is read, so one image is
held at a time. Credentials come from the environment only: ``MEDROBUST_PACS_USER`` +
``MEDROBUST_PACS_PASSWORD`` (HTTP basic) or ``MEDROBUST_PACS_TOKEN`` (bearer; wins when both are set).

DIMSE (``protocol: dimse``; ``host``, ``port``, ``called_aet``, ``calling_aet``): Study Root C-FIND
at STUDY, SERIES and IMAGE level, then one retrieval per series:

* ``retrieve: move``: C-MOVE to ``calling_aet``; a storage SCP of our own listens on ``move_port``
  (0: any free port) — on 127.0.0.1 when the PACS is on this machine, otherwise on all interfaces.
  The PACS must know ``calling_aet`` at this machine's address and that port (Orthanc:
  ``DicomModalities``).
* ``retrieve: get``: C-GET on the same association (SCP role negotiated for the storage SOP classes
  the C-FIND reported, each with the common transfer syntaxes, so compressed objects are not
  transcoded).

Received objects are written, byte for byte as sent (preamble and file meta added), to a private
temporary folder (mode 700) that :meth:`PacsSource.close` deletes. An item's ``read()`` hands its
file over (returns the bytes and deletes the file), so the disk holds only the instances retrieved
but not yet read: ingest may look ahead a few hundred items before it reads.

Identifiers: UIDs travel in queries and URLs but never reach a log line, an error message or an
output. ``ref`` is ``pacs:study-3/series-1/ima-<pseudonym>``: ordinals plus the keyed-hash image
pseudonym that is also the manifest's ``image_id``. The debug loggers of urllib3 and pynetdicom,
which would print URLs and query identifiers, are raised to WARNING unless they were configured.
"""

from __future__ import annotations

import email.message
import ipaddress
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from medrobust.data.deid import load_key, pseudonym
from medrobust.data.sources.base import Item, LabelTable, Rejected, SourceError
from medrobust.data.sources.folder import LabelledSource

log = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDROBUST_PACS_USER", "MEDROBUST_PACS_PASSWORD", "MEDROBUST_PACS_TOKEN"
CREDENTIALS_HINT = (f"set {USER_ENV} and {PASSWORD_ENV} (HTTP basic) or {TOKEN_ENV} (bearer token) "
                    "in the environment")

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

JSON = "application/dicom+json"
WADO_ORIGINAL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
WADO_DEFAULT = 'multipart/related; type="application/dicom"'
QIDO_PAGE = 1000

# DICOM tags in DICOMweb JSON
_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS, _INSTANCE_NO = "0020000D", "0020000E", "00080018", "00080016", "00200013"


@dataclass(frozen=True)
class PacsInstance:
    """One instance found by the query. UIDs are identifiers: used for retrieval, never shown."""

    study: str
    series: str
    sop: str
    sop_class: str
    ref: str


def split_filters(filters: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``data.pacs.filters`` -> (study, series, instance) query keys.

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
    """The filters for a message, with identifying values masked."""
    if not filters:
        return "no filters"
    return ", ".join(f"{k}={'<set>' if k in IDENTIFYING_KEYS else v}" for k, v in filters.items())


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/related`` body (RFC 2046 section 5.1.1) into (headers, payload) parts.

    Tolerates a preamble and an epilogue, transport padding after a delimiter, bare LF line breaks
    and parts without headers. Payloads are binary-safe: a part ends only at a line break followed
    by ``--boundary``.

    Args:
        body: the HTTP body.
        content_type: the response's Content-Type (it carries the boundary).

    Returns:
        The parts in order; header names are lower-case.

    Raises:
        ValueError: no boundary parameter, no delimiter in the body, or a truncated body.
    """
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError(f"the Content-Type has no boundary parameter: {content_type[:120]!r}")
    delim = b"--" + boundary.encode("latin-1")
    if body.startswith(delim):
        pos = len(delim)
    else:
        first = body.find(b"\n" + delim)
        if first < 0:
            raise ValueError("the body holds no multipart delimiter")
        pos = first + 1 + len(delim)
    parts: list[tuple[dict[str, str], bytes]] = []
    next_delim = _delimiter_pattern(delim)
    while True:
        if body.startswith(b"--", pos):  # close delimiter
            return parts
        eol = body.find(b"\n", pos)
        if eol < 0:
            raise ValueError("the body ends inside a delimiter line (truncated)")
        if body[pos:eol].strip(b" \t\r"):
            raise ValueError("unexpected characters after a multipart delimiter")
        start = eol + 1
        headers: dict[str, str] = {}
        blank = re.match(rb"\r?\n", body[start:start + 2])
        if blank:
            content = start + blank.end()
        else:
            end = re.compile(rb"\r?\n\r?\n").search(body, start)
            if end is None:
                raise ValueError("a part's headers never end (truncated)")
            for line in body[start:end.start()].decode("latin-1").splitlines():
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            content = end.end()
        found = next_delim.search(body, content)
        if found is None:
            raise ValueError("a part is not followed by a delimiter (truncated body)")
        parts.append((headers, body[content:found.start()]))
        pos = found.start() + len(found.group(1)) + len(delim)


def _delimiter_pattern(delim: bytes) -> re.Pattern[bytes]:
    """A line break, ``delim``, then ``--`` or (padding and) a line break: a real delimiter line,
    not the boundary's text followed by other characters inside a payload."""
    return re.compile(rb"(\r?\n)" + re.escape(delim) + rb"(?=--|[ \t]*\r?\n)")


def _safe_url(url: str) -> str:
    """``url`` without user:password@ (never shown)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quiet_identifier_loggers() -> None:
    """urllib3 logs request URLs (with UIDs) at DEBUG; pynetdicom dumps query identifiers at INFO."""
    for name in ("urllib3.connectionpool", "pynetdicom"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _ordinal_refs(rows: list[tuple[str, str, str, str, str]], key: bytes) -> list[PacsInstance]:
    """Sort (study, series, instance-number, sop, sop_class) rows and give each a non-identifying ref."""
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
# DICOMweb
# --------------------------------------------------------------------------------------------------
class DicomWebClient:
    """QIDO-RS queries and WADO-RS retrieval over one :class:`requests.Session`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        if not url:
            raise SourceError("data.pacs.url is empty; set it to the DICOMweb service root, "
                              "e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(f"data.pacs.url must start with http:// or https://, got {_safe_url(url)!r}")
        self.base = url.rstrip("/")
        self.shown = _safe_url(self.base)
        self.timeout = timeout_s
        self.session = requests.Session()
        self.has_credentials = True
        token, user, password = (os.environ.get(v) for v in (TOKEN_ENV, USER_ENV, PASSWORD_ENV))
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif user or password:
            if not (user and password):
                missing = PASSWORD_ENV if user else USER_ENV
                raise SourceError(f"{missing} is not set: HTTP basic authentication needs both {USER_ENV} "
                                  f"and {PASSWORD_ENV} (or set {TOKEN_ENV} for a bearer token)")
            self.session.auth = (user, password)
        else:
            self.has_credentials = False
        self._accept = WADO_ORIGINAL

    def get(self, path: str, accept: str, params: dict[str, Any] | None = None) -> requests.Response:
        """GET ``base + path``; maps transport failures and 401/403 to :class:`SourceError`."""
        try:
            resp = self.session.get(self.base + path, params=params, headers={"Accept": accept}, timeout=self.timeout)
        except requests.Timeout:
            raise SourceError(f"the PACS at {self.shown} did not answer within {self.timeout:g} s "
                              "(data.pacs.timeout_s); check data.pacs.url and the network") from None
        except requests.ConnectionError as exc:
            why = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            raise SourceError(f"cannot connect to the PACS at {self.shown} ({why}); check data.pacs.url and "
                              "that the server is running") from None
        except requests.RequestException as exc:
            raise SourceError(f"request to the PACS at {self.shown} failed ({type(exc).__name__}); "
                              "check data.pacs.url") from None
        if resp.status_code in (401, 403):
            given = "" if self.has_credentials else " (none are set now)"
            raise SourceError(f"the PACS at {self.shown} refused the credentials (HTTP {resp.status_code}): "
                              f"{CREDENTIALS_HINT}{given}")
        return resp

    def query(self, path: str, params: dict[str, str], what: str) -> list[dict[str, Any]]:
        """A paged QIDO-RS query; ``what`` names the level in messages."""
        results: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        offset = 0
        while True:
            resp = self.get(path, JSON, {**params, "limit": QIDO_PAGE, "offset": offset})
            if resp.status_code == 204:
                break
            if resp.status_code == 404 and path == "/studies":
                raise SourceError(f"no DICOMweb service at {self.shown} (HTTP 404 for /studies); set data.pacs.url "
                                  "to the service root, e.g. http://host:8042/dicom-web for Orthanc")
            if resp.status_code == 404:  # a study or series deleted between two queries
                break
            if resp.status_code == 400:
                raise SourceError(f"the PACS at {self.shown} rejected the {what} query (HTTP 400); "
                                  "check data.pacs.filters")
            if resp.status_code != 200:
                raise SourceError(f"the {what} query to the PACS at {self.shown} failed with HTTP "
                                  f"{resp.status_code}; check data.pacs.url")
            try:
                page = resp.json() if resp.content.strip() else []
            except ValueError:
                raise SourceError(f"the PACS at {self.shown} answered the {what} query with something that is "
                                  "not DICOM JSON; is data.pacs.url the DICOMweb root?") from None
            if not isinstance(page, list):
                raise SourceError(f"the PACS at {self.shown} answered the {what} query with something that is "
                                  "not a DICOM JSON list; is data.pacs.url the DICOMweb root?")
            fresh = [obj for obj in page if _identity(obj) not in seen]
            seen.update(_identity(obj) for obj in fresh)
            results.extend(fresh)
            if len(page) < QIDO_PAGE or not fresh:  # last page, or a server that ignores offset
                break
            offset += len(page)
        return results

    def find(self, study_keys: dict[str, str], series_keys: dict[str, str],
             instance_keys: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
        rows = []
        for study in self.query("/studies", study_keys, "study"):
            st = json_value(study, _STUDY_UID)
            for series in self.query(f"/studies/{st}/series", series_keys, "series"):
                se = json_value(series, _SERIES_UID)
                for inst in self.query(f"/studies/{st}/series/{se}/instances", instance_keys, "instance"):
                    sop = json_value(inst, _SOP_UID)
                    if st and se and sop:
                        rows.append((st, se, json_value(inst, _INSTANCE_NO), sop, json_value(inst, _SOP_CLASS)))
        return rows

    def fetch(self, inst: PacsInstance) -> bytes:
        """WADO-RS: the instance's bytes in its original transfer syntax. Raises :class:`Rejected`."""
        path = f"/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
        resp = self.get(path, self._accept)
        if resp.status_code == 406 and self._accept == WADO_ORIGINAL:
            log.warning("the PACS at %s cannot send original transfer syntaxes (HTTP 406 for transfer-syntax=*); "
                        "asking for its default (usually Explicit VR Little Endian)", self.shown)
            self._accept = WADO_DEFAULT
            resp = self.get(path, self._accept)
        if resp.status_code != 200:
            raise Rejected("not_retrieved", f"the PACS answered HTTP {resp.status_code} to the WADO-RS request for "
                                            "this instance (deleted or moved since the query?)")
        ctype = resp.headers.get("Content-Type", "")
        if ctype.lower().startswith("application/dicom"):
            return bytes(resp.content)
        try:
            parts = parse_multipart(resp.content, ctype)
        except ValueError as exc:
            raise Rejected("not_retrieved",
                           f"the WADO-RS answer is not a valid multipart/related body: {exc}") from None
        dicom = [body for headers, body in parts
                 if headers.get("content-type", "application/dicom").lower().startswith("application/dicom")]
        if len(dicom) != 1:
            raise Rejected("not_retrieved", f"the WADO-RS answer for one instance holds {len(dicom)} DICOM parts")
        return dicom[0]

    def close(self) -> None:
        self.session.close()


def _identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return json_value(obj, _STUDY_UID), json_value(obj, _SERIES_UID), json_value(obj, _SOP_UID)


def json_value(obj: dict[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, as a string ('' when absent)."""
    values = (obj.get(tag) or {}).get("Value") or [""]
    return "" if values[0] is None else str(values[0])


# --------------------------------------------------------------------------------------------------
# DIMSE
# --------------------------------------------------------------------------------------------------
#: Proposed for each storage SOP class in a C-GET, so no object has to be transcoded.
GET_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5",     # RLE lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired)
)
MAX_CONTEXTS = 128


class DimseClient:
    """C-FIND, then C-MOVE (to a storage SCP of our own) or C-GET, one series at a time."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.where = f"{cfg.host}:{cfg.port}"
        self._tmp: Path | None = None
        self._received: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._server: Any = None

    # -- associations -----------------------------------------------------------------------------
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.calling_aet)
        t = float(self.cfg.timeout_s)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        return ae

    def _associate(self, ae: Any, **kwargs: Any) -> Any:
        assoc = ae.associate(self.cfg.host, int(self.cfg.port), ae_title=self.cfg.called_aet, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise SourceError(
                f"the PACS at {self.where} rejected the association (called AE title {self.cfg.called_aet!r}, "
                f"calling AE title {self.cfg.calling_aet!r}); check data.pacs.called_aet and data.pacs.calling_aet, "
                "and that the PACS knows our AE title"
            )
        raise SourceError(
            f"cannot reach the PACS at {self.where} (no DICOM association within {self.cfg.timeout_s:g} s); check "
            "data.pacs.host and data.pacs.port and that the server is running"
        )

    def _responses(self, responses: Any, what: str, assoc: Any) -> Iterator[tuple[int, Any]]:
        """(status code, identifier) of each DIMSE response; raises :class:`SourceError` when the
        association was lost (pynetdicom then yields an empty status, and marks an abort only after)."""
        lost = False
        for status, identifier in responses:
            if not status:
                lost = True
                continue
            yield int(status.Status), identifier
        if not lost:
            return
        settle = time.monotonic() + 2.0  # the reactor thread records the abort a moment later
        while assoc.is_established and not assoc.is_aborted and time.monotonic() < settle:
            time.sleep(0.01)
        if assoc.is_aborted:
            raise SourceError(
                f"the PACS at {self.where} aborted the association during {what}; it may not know or allow our "
                f"calling AE title {self.cfg.calling_aet!r}: register it in the PACS (Orthanc: DicomModalities) "
                "or check data.pacs.calling_aet"
            )
        raise SourceError(f"the PACS at {self.where} stopped answering during {what} (no answer within "
                          f"{self.cfg.timeout_s:g} s; data.pacs.timeout_s)")

    # -- query ------------------------------------------------------------------------------------
    def find(self, study_keys: dict[str, str], series_keys: dict[str, str],
             instance_keys: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae)
        rows = []
        try:
            for study in self._cfind(assoc, "STUDY", {"StudyInstanceUID": "", **study_keys}):
                st = str(study.get("StudyInstanceUID", ""))
                series_q = {"StudyInstanceUID": st, "SeriesInstanceUID": "", **series_keys}
                for series in self._cfind(assoc, "SERIES", series_q):
                    se = str(series.get("SeriesInstanceUID", ""))
                    inst_q = {"StudyInstanceUID": st, "SeriesInstanceUID": se, "SOPInstanceUID": "",
                              "SOPClassUID": "", "InstanceNumber": "", **instance_keys}
                    for inst in self._cfind(assoc, "IMAGE", inst_q):
                        sop = str(inst.get("SOPInstanceUID", ""))
                        if st and se and sop:
                            rows.append((st, se, str(inst.get("InstanceNumber", "") or ""), sop,
                                         str(inst.get("SOPClassUID", "") or "")))
        finally:
            if assoc.is_established:
                assoc.release()
        return rows

    def _cfind(self, assoc: Any, level: str, keys: dict[str, str]) -> list[Any]:
        from pydicom import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        query = Dataset()
        query.QueryRetrieveLevel = level
        for k, v in keys.items():
            setattr(query, k, v)
        found = []
        for code, identifier in self._responses(assoc.send_c_find(query, FIND), f"C-FIND at {level} level", assoc):
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    found.append(identifier)
            elif code != 0x0000:
                raise SourceError(f"C-FIND at {level} level failed at the PACS at {self.where} with status "
                                  f"0x{code:04X}; check data.pacs.filters (keys the PACS supports at that level)")
        return found

    # -- retrieval --------------------------------------------------------------------------------
    def _folder(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="medrobust-pacs-"))  # mode 700
        return self._tmp

    def _on_store(self, event: Any) -> int:
        """C-STORE handler: write the dataset as received (no decode/re-encode) with file meta."""
        try:
            sop = str(event.request.AffectedSOPInstanceUID)
            with self._lock:
                self._count += 1
                path = self._folder() / f"{self._count:08d}.dcm"
            path.write_bytes(event.encoded_dataset(include_meta=True))
            with self._lock:
                self._received[sop] = path
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - any failure must become a DIMSE status, not kill the SCP
            log.warning("could not store a received instance (%s)", type(exc).__name__)
            return 0xA700  # out of resources

    def start_scp(self) -> None:
        """Start the storage SCP that receives C-MOVE sub-operations (once)."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        if self._server is not None:
            return
        ae = self._ae()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        bind = "127.0.0.1" if _is_loopback(self.cfg.host) else ""
        try:
            self._server = ae.start_server((bind, int(self.cfg.move_port)), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise SourceError(f"cannot listen on port {self.cfg.move_port} for C-MOVE ({exc.strerror}); set "
                              "data.pacs.move_port to a free port that the PACS knows for "
                              f"{self.cfg.calling_aet!r}, or use data.pacs.retrieve: get") from None
        port = self._server.server_address[1]
        log.info("storage SCP %s listening on %s:%d for C-MOVE", self.cfg.calling_aet, bind or "*", port)

    def _move(self, study: str, series: str) -> int:
        from pydicom import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        self.start_scp()
        ae = self._ae()
        ae.add_requested_context(MOVE)
        assoc = self._associate(ae)
        ident = Dataset()
        ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SeriesInstanceUID = "SERIES", study, series
        code = 0x0000
        try:
            for code, _ in self._responses(assoc.send_c_move(ident, self.cfg.calling_aet, MOVE), "C-MOVE", assoc):
                pass
        finally:
            if assoc.is_established:
                assoc.release()
        if code == 0xA801:
            raise SourceError(
                f"the PACS at {self.where} does not know the C-MOVE destination {self.cfg.calling_aet!r} "
                "(status 0xA801): register it in the PACS with this machine's address and data.pacs.move_port "
                "(Orthanc: DicomModalities), or use data.pacs.retrieve: get"
            )
        return code

    def _get(self, study: str, series: str, sop_classes: list[str]) -> int:
        from pydicom import Dataset
        from pynetdicom import StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        ae = self._ae()
        ae.add_requested_context(GET)
        room = MAX_CONTEXTS - 1
        if sop_classes:
            if len(sop_classes) > room:
                log.warning("%d storage SOP classes in one series; C-GET proposes the first %d", len(sop_classes), room)
                sop_classes = sop_classes[:room]
            per_class = max(1, min(len(GET_TRANSFER_SYNTAXES), room // len(sop_classes)))
            for uid in sop_classes:
                for ts in GET_TRANSFER_SYNTAXES[:per_class]:
                    ae.add_requested_context(uid, ts)
        else:  # the PACS did not report SOP classes: the common ones, default transfer syntaxes
            sop_classes = [cx.abstract_syntax for cx in StoragePresentationContexts[:room]]
            for uid in sop_classes:
                ae.add_requested_context(uid)
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        ident = Dataset()
        ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SeriesInstanceUID = "SERIES", study, series
        code = 0x0000
        try:
            for code, _ in self._responses(assoc.send_c_get(ident, GET), "C-GET", assoc):
                pass
        finally:
            if assoc.is_established:
                assoc.release()
        return code

    def items(self, instances: list[PacsInstance]) -> Iterator[Item]:
        """Retrieve series by series; yield an item per found instance (read from the temporary folder)."""
        groups: dict[tuple[str, str], list[PacsInstance]] = {}
        for inst in instances:
            groups.setdefault((inst.study, inst.series), []).append(inst)
        how = "C-GET" if self.cfg.retrieve == "get" else "C-MOVE"
        for (study, series), members in groups.items():
            if self.cfg.retrieve == "get":
                code = self._get(study, series, sorted({i.sop_class for i in members if i.sop_class}))
            else:
                code = self._move(study, series)
            with self._lock:
                received, self._received = self._received, {}
            paths = {inst.sop: received.pop(inst.sop, None) for inst in members}
            for extra in received.values():  # sent but not in the query result (stored since): not ours
                extra.unlink(missing_ok=True)
            missing = sum(p is None for p in paths.values())
            if missing or code not in (0x0000, 0xB000):
                log.warning("%s of a series ended with status 0x%04X; %d of %d instances not received",
                            how, code, missing, len(members))
            for inst in members:
                yield Item(ref=inst.ref, kind="dicom", read=_reader(paths[inst.sop], how, code))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _reader(path: Path | None, how: str, code: int) -> Callable[[], bytes]:
    """``read()`` of a received instance: returns its bytes once and deletes the file, so the disk
    holds only instances retrieved but not yet read (ingest may look ahead before reading)."""
    def read() -> bytes:
        if path is None:
            raise Rejected("not_retrieved", f"the PACS listed this instance but did not send it ({how} status "
                                            f"0x{code:04X})")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RuntimeError("a PACS item was read twice (or after close()): its file is handed over on "
                               "the first read") from None
        path.unlink()
        return raw

    return read


# --------------------------------------------------------------------------------------------------
# the source
# --------------------------------------------------------------------------------------------------
class PacsSource(LabelledSource):
    """DICOM instances from a PACS (see the module docstring); labels from ``data.labels_csv``.

    Args:
        params: validated params; ``data.pacs`` and ``data.labels_csv`` are used.
        labels_csv: overrides ``data.labels_csv``.

    Raises:
        SourceError: bad settings, refused credentials, an unreachable PACS, or no instance matches.
    """

    name = "pacs"

    def __init__(self, params: Any, labels_csv: str | Path | None = None, **_: Any) -> None:
        _quiet_identifier_loggers()
        cfg = params.data.pacs
        self.cfg = cfg
        self.table = LabelTable.from_path(labels_csv or params.data.labels_csv)
        study_keys, series_keys, instance_keys = split_filters(dict(cfg.filters))
        self.client: DicomWebClient | DimseClient
        if cfg.protocol == "dicomweb":
            self.client = DicomWebClient(cfg.url, float(cfg.timeout_s))
            where = f"the DICOMweb service at {self.client.shown} (data.pacs.url)"
        else:
            self.client = DimseClient(cfg)
            where = f"the PACS at {cfg.host}:{cfg.port} (data.pacs.host/port, AE title {cfg.called_aet!r})"
        try:
            rows = self.client.find(study_keys, series_keys, instance_keys)
            if isinstance(self.client, DimseClient) and cfg.retrieve == "move" and rows:
                self.client.start_scp()  # a busy move_port fails now, before ingest writes anything
        except BaseException:
            self.client.close()
            raise
        if not rows:
            self.client.close()
            raise SourceError(f"{where} holds no instances matching data.pacs.filters "
                              f"({describe_filters(dict(cfg.filters))}); check data.pacs.filters")
        self.instances = _ordinal_refs(rows, load_key())
        log.info("pacs: %d instances in %d series of %d studies (%s)", len(self.instances),
                 len({(i.study, i.series) for i in self.instances}), len({i.study for i in self.instances}),
                 cfg.protocol)

    def items(self) -> Iterator[Item]:
        if isinstance(self.client, DicomWebClient):
            client = self.client
            for inst in self.instances:
                yield Item(ref=inst.ref, kind="dicom", read=lambda inst=inst: client.fetch(inst))
        else:
            yield from self.client.items(self.instances)

    def close(self) -> None:
        self.client.close()


__all__ = ["DicomWebClient", "DimseClient", "PacsInstance", "PacsSource", "describe_filters", "parse_multipart",
           "split_filters"]
