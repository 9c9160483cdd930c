"""DICOMweb: QIDO-RS queries and WADO-RS retrieval of the instances of a PACS."""

from __future__ import annotations

import email.message
import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit

import requests

from medrobust.data.sources.base import Rejected, SourceError
from medrobust.data.sources.pacs.query import PacsInstance, safe_url

log = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDROBUST_PACS_USER", "MEDROBUST_PACS_PASSWORD", "MEDROBUST_PACS_TOKEN"
CREDENTIALS_HINT = (f"set {USER_ENV} and {PASSWORD_ENV} (HTTP basic) or {TOKEN_ENV} (bearer token) "
                    "in the environment")

JSON = "application/dicom+json"
WADO_ORIGINAL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
WADO_DEFAULT = 'multipart/related; type="application/dicom"'
QIDO_PAGE = 1000

# DICOM tags in DICOMweb JSON
_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS, _INSTANCE_NO = "0020000D", "0020000E", "00080018", "00080016", "00200013"


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


class DicomWebClient:
    """QIDO-RS queries and WADO-RS retrieval over one :class:`requests.Session`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        if not url:
            raise SourceError("data.pacs.url is empty; set it to the DICOMweb service root, "
                              "e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(f"data.pacs.url must start with http:// or https://, got {safe_url(url)!r}")
        self.base = url.rstrip("/")
        self.shown = safe_url(self.base)
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

