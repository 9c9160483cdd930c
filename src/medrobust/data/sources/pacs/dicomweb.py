"""DICOMweb: QIDO-RS queries and WADO-RS retrieval through the dicomweb-client library.

`dicomweb-client <https://github.com/ImagingDataCommons/dicomweb-client>`_ does the HTTP, the paging
parameters and the multipart decoding; :class:`DicomWebClient` pages with a guard against servers
that ignore ``offset``, keeps the bytes exactly as the server sent them (``FileDataset.buffer``), and
turns the library's exceptions into messages that name the setting to fix and hold no identifier.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.errors import InvalidDicomError
from retrying import RetryError

from medrobust.data.sources.base import Rejected, SourceError
from medrobust.data.sources.pacs.query import PacsInstance, safe_url

log = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDROBUST_PACS_USER", "MEDROBUST_PACS_PASSWORD", "MEDROBUST_PACS_TOKEN"
CREDENTIALS_HINT = (f"set {USER_ENV} and {PASSWORD_ENV} (HTTP basic) or {TOKEN_ENV} (bearer token) "
                    "in the environment")

#: WADO-RS media types: any transfer syntax (the object as stored), or the server's default
WADO_ORIGINAL: tuple[Any, ...] = (("application/dicom", "*"),)
WADO_DEFAULT: tuple[Any, ...] = ("application/dicom",)
QIDO_PAGE = 1000
#: dicomweb-client tries a request that got no answer (refused, timed out) or HTTP 408/429/503/504
#: this many times in all, waiting 2x then 4x the multiplier (ms) in between: 0.2 s, 0.4 s
HTTP_ATTEMPTS, HTTP_WAIT_MULTIPLIER_MS = 3, 100

# DICOM tags in DICOMweb JSON
_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS, _INSTANCE_NO = "0020000D", "0020000E", "00080018", "00080016", "00200013"


class DicomWebClient:
    """QIDO-RS queries and WADO-RS retrieval through :class:`dicomweb_client.DICOMwebClient`.

    The library does the HTTP, the paging parameters and the multipart decoding; this class pages,
    de-duplicates, and turns the library's exceptions into messages that name the setting to fix
    and hold no identifier.

    Args:
        url: the DICOMweb service root (``data.pacs.url``), without credentials.
        timeout_s: seconds each HTTP request may take (``data.pacs.timeout_s``).

    Attributes:
        shown: ``url`` as messages show it.
        session: the :class:`requests.Session` every request goes through, with the credentials
            from the environment.
        has_credentials: whether ``session`` carries credentials.
        api: the underlying :class:`dicomweb_client.DICOMwebClient`.

    Raises:
        SourceError: an empty or non-HTTP(S) url, credentials in the url, or only one of
            ``MEDROBUST_PACS_USER`` / ``MEDROBUST_PACS_PASSWORD`` set.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        if not url:
            raise SourceError("data.pacs.url is empty; set it to the DICOMweb service root, "
                              "e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
        self.shown = safe_url(url.rstrip("/"))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SourceError(f"data.pacs.url must start with http:// or https://, got {self.shown!r}")
        if parts.username is not None or parts.password is not None:
            raise SourceError(f"data.pacs.url must not hold credentials (user:password@); {CREDENTIALS_HINT}")
        self.timeout = timeout_s
        self.session, self.has_credentials = session_from_environment()
        try:
            # permissive_uid: accept the UIDs the PACS itself reports, as any client of it would
            self.api = DICOMwebClient(url.rstrip("/"), session=self.session, timeout=timeout_s, permissive_uid=True)
        except ValueError:
            raise SourceError(f"data.pacs.url {self.shown!r} is not a URL of the form "
                              "http(s)://host[:port]/path") from None
        # the library sends ``Host: <host>`` without the port (and mangles an IPv6 literal); send the
        # url's host[:port] as HTTP/1.1 asks (RFC 9110 section 7.2), as requests itself would
        self.api.host = parts.netloc
        self.api.set_http_retry_params(max_attempts=HTTP_ATTEMPTS, wait_exponential_multiplier=HTTP_WAIT_MULTIPLIER_MS)
        self._media_types = WADO_ORIGINAL

    # -- query ------------------------------------------------------------------------------------
    def find(self, study_keys: dict[str, str], series_keys: dict[str, str],
             instance_keys: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
        """Query the hierarchy study -> series -> instance, each level with its filter keys.

        Args:
            study_keys: filters sent with the study search.
            series_keys: filters sent with each series search.
            instance_keys: filters sent with each instance search.

        Returns:
            One (study UID, series UID, InstanceNumber, SOP instance UID, SOP class UID) row per instance.

        Raises:
            SourceError: refused credentials, no answer, no DICOMweb service at the url, a rejected
                query, or an answer that is not DICOM JSON.
        """
        rows = []
        for study in self._search("study", study_keys):
            st = json_value(study, _STUDY_UID)
            for series in self._search("series", series_keys, study_instance_uid=st) if st else []:
                se = json_value(series, _SERIES_UID)
                if not se:
                    continue
                for inst in self._search("instance", instance_keys, study_instance_uid=st, series_instance_uid=se):
                    sop = json_value(inst, _SOP_UID)
                    if sop:
                        rows.append((st, se, json_value(inst, _INSTANCE_NO), sop, json_value(inst, _SOP_CLASS)))
        return rows

    def _search(self, level: str, filters: dict[str, str], **parent: str) -> list[dict[str, Any]]:
        """Every result of one QIDO-RS search, page by page, each object once.

        ``get_remaining`` is not used: it asks again until a page is empty, forever against a server
        that ignores ``offset``. Here paging stops at a short page or one that brings nothing new.
        """
        search: Callable[..., list[dict[str, Any]]] = {
            "study": self.api.search_for_studies, "series": self.api.search_for_series,
            "instance": self.api.search_for_instances,
        }[level]
        results: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        offset = 0
        while True:
            page = self._page(search, level, filters, offset, parent)
            fresh = [obj for obj in page if _identity(obj) not in seen]
            seen.update(_identity(obj) for obj in fresh)
            results.extend(fresh)
            if len(page) < QIDO_PAGE or not fresh:  # last page, or a server that ignores offset
                return results
            offset += len(page)

    def _page(self, search: Callable[..., list[dict[str, Any]]], level: str, filters: dict[str, str],
              offset: int, parent: dict[str, str]) -> list[dict[str, Any]]:
        """One page of a search; library exceptions become :class:`SourceError` (a 404 below the
        study level, a study or series deleted between two queries, is an empty page)."""
        try:
            page = search(**parent, search_filters=dict(filters), limit=QIDO_PAGE, offset=offset)
        except (requests.HTTPError, RetryError) as exc:
            status = self._status(exc)
            if status == 404 and level == "study":
                raise SourceError(f"no DICOMweb service at {self.shown} (HTTP 404 for /studies); set data.pacs.url "
                                  "to the service root, e.g. http://host:8042/dicom-web for Orthanc") from None
            if status == 404:
                return []
            if status == 400:
                raise SourceError(f"the PACS at {self.shown} rejected the {level} query (HTTP 400); "
                                  "check data.pacs.filters") from None
            raise SourceError(f"the {level} query to the PACS at {self.shown} failed with HTTP {status}; "
                              "check data.pacs.url") from None
        except requests.exceptions.InvalidJSONError:
            raise SourceError(f"the PACS at {self.shown} answered the {level} query with something that is "
                              "not DICOM JSON; is data.pacs.url the DICOMweb root?") from None
        except requests.RequestException as exc:
            raise self._no_answer(exc) from None
        except ValueError:  # the library refused a UID of the previous answer (it holds '/' or '@')
            raise SourceError(f"the PACS at {self.shown} answered with a UID that cannot be used in a DICOMweb "
                              f"URL; the {level} query was not sent") from None
        if not isinstance(page, list) or not all(isinstance(obj, dict) for obj in page):
            raise SourceError(f"the PACS at {self.shown} answered the {level} query with something that is "
                              "not a DICOM JSON list; is data.pacs.url the DICOMweb root?")
        return page

    # -- retrieval --------------------------------------------------------------------------------
    def fetch(self, inst: PacsInstance) -> bytes:
        """WADO-RS: the instance in its original transfer syntax, byte for byte as the server sent it.

        Args:
            inst: an instance that :meth:`find` reported.

        Returns:
            The DICOM file's bytes.

        Raises:
            Rejected: ``not_retrieved`` (an HTTP error, or an answer that is not one DICOM object)
                or ``not_dicom`` (a part without a DICOM header).
            SourceError: refused credentials, or no answer.
        """
        try:
            ds = self._retrieve(inst)
        except (requests.HTTPError, RetryError) as exc:
            raise Rejected("not_retrieved", f"the PACS answered HTTP {self._status(exc)} to the WADO-RS request for "
                                            "this instance (deleted or moved since the query?)") from None
        except requests.RequestException as exc:
            raise self._no_answer(exc) from None
        except InvalidDicomError:
            raise Rejected("not_dicom", "the WADO-RS answer holds no DICOM file (no 'DICM' preamble)") from None
        except Exception as exc:  # noqa: BLE001 - the library and pydicom raise many types on a malformed answer
            raise Rejected("not_retrieved", "the WADO-RS answer is not one readable DICOM object "
                                            f"({type(exc).__name__})") from None
        buffer = getattr(ds, "buffer", None)  # pydicom 3 keeps the bytes a FileDataset was read from
        if not hasattr(buffer, "getvalue"):
            raise Rejected("not_retrieved", "the WADO-RS answer was decoded but its bytes were not kept "
                                            "(pydicom's FileDataset.buffer is missing)")
        return bytes(buffer.getvalue())

    def _retrieve(self, inst: PacsInstance) -> Any:
        """``retrieve_instance``; on HTTP 406 for ``transfer-syntax=*`` switch, once and for all later
        requests, to the server's default transfer syntax."""
        try:
            return self.api.retrieve_instance(inst.study, inst.series, inst.sop, media_types=self._media_types)
        except requests.HTTPError as exc:
            if self._status(exc) != 406 or self._media_types != WADO_ORIGINAL:
                raise
        log.warning("the PACS at %s cannot send original transfer syntaxes (HTTP 406 for transfer-syntax=*); "
                    "asking for its default (usually Explicit VR Little Endian)", self.shown)
        self._media_types = WADO_DEFAULT
        return self.api.retrieve_instance(inst.study, inst.series, inst.sop, media_types=self._media_types)

    # -- errors -----------------------------------------------------------------------------------
    def _status(self, exc: requests.HTTPError | RetryError) -> int:
        """The HTTP status of a request that failed with an error status (``RetryError``: a
        retriable status, 503 say, until the attempts ran out).

        Raises:
            SourceError: HTTP 401/403, refused credentials.
        """
        response = exc.response if isinstance(exc, requests.HTTPError) else exc.last_attempt.value
        status = int(getattr(response, "status_code", 0) or 0)
        if status in (401, 403):
            given = "" if self.has_credentials else " (none are set now)"
            raise SourceError(f"the PACS at {self.shown} refused the credentials (HTTP {status}): "
                              f"{CREDENTIALS_HINT}{given}")
        return status

    def _no_answer(self, exc: requests.RequestException) -> SourceError:
        """The error for a request that got no HTTP answer (after the library's attempts)."""
        if isinstance(exc, requests.Timeout):
            return SourceError(f"the PACS at {self.shown} did not answer within {self.timeout:g} s "
                               f"(data.pacs.timeout_s; {HTTP_ATTEMPTS} attempts); check data.pacs.url and the network")
        if isinstance(exc, requests.ConnectionError):
            why = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            return SourceError(f"cannot connect to the PACS at {self.shown} ({why}); check data.pacs.url and "
                               "that the server is running")
        return SourceError(f"request to the PACS at {self.shown} failed ({type(exc).__name__}); check data.pacs.url")

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()


def session_from_environment() -> tuple[requests.Session, bool]:
    """A :class:`requests.Session` carrying the PACS credentials from the environment.

    Returns:
        The session, and whether it carries credentials (a bearer token wins over user + password).

    Raises:
        SourceError: only one of ``MEDROBUST_PACS_USER`` and ``MEDROBUST_PACS_PASSWORD`` is set.
    """
    token, user, password = (os.environ.get(v) for v in (TOKEN_ENV, USER_ENV, PASSWORD_ENV))
    if token:
        session = create_session()
        session.headers["Authorization"] = f"Bearer {token}"
        return session, True
    if user and password:
        return create_session_from_user_pass(user, password), True
    if user or password:
        missing = PASSWORD_ENV if user else USER_ENV
        raise SourceError(f"{missing} is not set: HTTP basic authentication needs both {USER_ENV} "
                          f"and {PASSWORD_ENV} (or set {TOKEN_ENV} for a bearer token)")
    return create_session(), False


def _identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return json_value(obj, _STUDY_UID), json_value(obj, _SERIES_UID), json_value(obj, _SOP_UID)


def json_value(obj: dict[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, as a string ('' when absent).

    Args:
        obj: one DICOM JSON object (PS3.18 F.2), e.g. one QIDO-RS result.
        tag: the tag as eight hex digits, e.g. ``00080018``.

    Returns:
        ``str`` of the first value, or ``""`` when the attribute, its ``Value`` or the value is missing.
    """
    values = (obj.get(tag) or {}).get("Value") or [""]
    return "" if values[0] is None else str(values[0])


__all__ = ["CREDENTIALS_HINT", "DicomWebClient", "json_value", "session_from_environment"]
