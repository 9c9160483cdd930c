"""Pseudonymisation: keyed hashes (HMAC-SHA256) replace patient and instance identifiers.

The key never lives in params.yaml or in any output. It comes from the environment variable
``MEDROBUST_PSEUDONYM_KEY``; when that is unset, a random key is created once in
``~/.config/medrobust/pseudonym.key`` (mode 600), so repeated runs on one machine give the same
pseudonyms while nobody without the key can map a pseudonym back by hashing candidate IDs.

Nothing else from a DICOM header leaves ingest except non-identifying technical facts
(Modality, PhotometricInterpretation, BitsStored, Rows, Columns), filtered by
:func:`deidentify_facts`. :func:`deidentify_dataset` de-identifies a whole DICOM data set under the
PS3.15 Annex E Basic Application Level Confidentiality Profile (:data:`ANNEX_E_BASIC`).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
from collections import Counter
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

PROFILE_FILE = "annex_e_basic_profile.csv"
KEY_ENV = "MEDROBUST_PSEUDONYM_KEY"
KEY_FILE_ENV = "MEDROBUST_PSEUDONYM_KEY_FILE"


def _default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV, Path.home() / ".config" / "medrobust" / "pseudonym.key"))


def load_key() -> bytes:
    """The pseudonymisation key: from the environment, else a local key file (created if absent).

    ``MEDROBUST_PSEUDONYM_KEY`` wins; otherwise the file ``MEDROBUST_PSEUDONYM_KEY_FILE`` names (default
    ``~/.config/medrobust/pseudonym.key``) is read, and created first (mode 600, 32 random bytes as hex,
    with a warning) when it does not exist.

    Returns:
        The key's bytes.

    Raises:
        ValueError: ``MEDROBUST_PSEUDONYM_KEY`` is set but shorter than 16 characters.
        OSError: the key file cannot be created or read.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        if len(env) < 16:
            raise ValueError(f"{KEY_ENV} must be at least 16 characters long")
        return env.encode()
    path = _default_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        log.warning("%s is unset: created a local pseudonymisation key at %s", KEY_ENV, path)
    return path.read_text().strip().encode()


def pseudonym(key: bytes, kind: str, value: str, length: int = 16) -> str:
    """A stable pseudonym for ``value`` of a given ``kind`` (e.g. ``patient``, ``image``).

    The same key, kind and value always give the same pseudonym; without the key it cannot be mapped
    back by hashing candidate values.

    Args:
        key: the pseudonymisation key (:func:`load_key`).
        kind: what ``value`` is; it salts the hash and its first three letters prefix the result.
        value: the identifier to replace (e.g. a PatientID or SOPInstanceUID).
        length: hex digits of the HMAC-SHA256 kept.

    Returns:
        ``<kind[:3]>-<length hex digits>``, e.g. ``pat-`` followed by 16 hex digits for ``kind="patient"``.
    """
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:3]}-{digest[:length]}"


#: Item references that identify no one as they are: an array index (``train[17]``), a PACS reference
#: made of counters and keyed hashes, a keyed-hash label row, a table row number, or a reference
#: already made by :func:`public_ref`.
_SAFE_REF = re.compile(r"[a-z]+\[\d+\]|pacs:study-\d+/series-\d+/ima-[0-9a-f]+|labels:ima-[0-9a-f]+"
                       r"|clinical:[\w.-]+:row \d+|(?:[a-z]+:)?fil-[0-9a-f]{16}(?:\.[a-z0-9]{1,5})?")
#: the ``kind:`` prefixes sources put before a table row's key (kept; the key is hashed)
_KIND_PREFIX = re.compile(r"(labels|groups|metadata|clinical):(.*)", re.S)
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


def public_ref(key: bytes, ref: str) -> str:
    """How an item is named in operator files (quarantine.csv, ingest.json, logs): never its raw path.

    A source path can hold identifiers (PACS exports name folders after patients:
    ``MRN12345_Chen^Mei/IM0001.dcm``), and a file that could not be read has no header to say which
    parts identify someone, so the whole path is replaced by a keyed hash. The lower-cased file
    suffix (``.dcm``, ``.png``) and a ``kind:`` prefix (``labels:``, ``groups:``) are kept, so the
    operator still sees what sort of item it was. References that are already safe
    (:data:`_SAFE_REF`) are returned unchanged.

    ``medrobust quarantine locate <ref>`` re-lists the source on the operator's machine and prints
    the raw path; no map from reference to path is stored anywhere.

    Args:
        key: the pseudonymisation key (:func:`load_key`).
        ref: the source's reference for the item (e.g. a path relative to ``data.dicom_dir``).

    Returns:
        e.g. ``fil-<16 hex digits>.dcm`` or ``labels:fil-<16 hex digits>.png``.
    """
    if _SAFE_REF.fullmatch(ref):
        return ref
    prefix, rest = "", ref
    if m := _KIND_PREFIX.fullmatch(ref):
        prefix, rest = f"{m.group(1)}:", m.group(2)
    suffix = PurePosixPath(rest).suffix
    suffix = suffix.lower() if _SUFFIX.fullmatch(suffix) else ""
    return f"{prefix}{pseudonym(key, 'file', rest)}{suffix}"


#: ``"<path> (<why>)"``, the form in which sources list a skipped entry with its reason
_SKIPPED = re.compile(r"(.*) \(([^()]*)\)", re.S)


def public_skipped(key: bytes, entry: str) -> str:
    """A source's skipped entry (``"<path>"`` or ``"<path> (<why>)"``) with its path made a :func:`public_ref`
    (and the other path of a ``"copy of <path>"`` reason too)."""
    m = _SKIPPED.fullmatch(entry)
    if not m:
        return public_ref(key, entry)
    why = m.group(2)
    if why.startswith("copy of "):
        why = f"copy of {public_ref(key, why[len('copy of '):])}"
    return f"{public_ref(key, m.group(1))} ({why})"


# ----------------------------------------------------------------------------------------------
# DICOM PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile column, shipped
# as the data file annex_e_basic_profile.csv (one row per attribute: keyword, tag, action code, group).
#
# Action codes (Table E.1-1a): D replace with a non-empty dummy value of the same VR; Z replace with
# an empty value; X remove; K keep (sequences are still cleaned); C clean (replace with values of
# similar meaning that identify nobody); U replace a UID with one that is consistent within the
# de-identified set. Combined codes ("X/Z", "Z/D", "X/D", "X/Z/D", "X/Z/U*") let the IOD's Type
# (3 / 2 / 1) decide; they are kept here exactly as the standard writes them, and
# :func:`resolve_action` applies the *strictest* part (X before Z before D), because medrobust
# does not look up the IOD module tables. A de-identified file therefore stays readable but can
# lack a Type 1 attribute that the profile would have filled with a dummy (e.g. Series Date).
#
# "C" is implemented as removal (X): cleaning free text reliably needs a human or an NLP model,
# and removal is the only variant that is certainly safe.
#
# Outside the per-attribute table the profile also requires: all private attributes removed
# (no Retain Safe Private option here), Curve Data (50xx,xxxx) removed, Overlay Data (60xx,3000)
# and Overlay Comments (60xx,4000) removed — we remove the whole overlay group, since an overlay
# plane without its data is not valid — and Patient Identity Removed / De-identification Method
# (Code Sequence, 113100) set. Burned-in annotations in the pixel data are *not* detected.
# ----------------------------------------------------------------------------------------------
def _load_profile() -> dict[str, str]:
    """The table shipped with the package (``annex_e_basic_profile.csv``: keyword, tag, action, group)."""
    text = resources.files("medrobust.data").joinpath(PROFILE_FILE).read_text(encoding="utf-8")
    return {row["keyword"]: row["basic_profile"] for row in csv.DictReader(io.StringIO(text))}


#: keyword -> action code of the Basic Profile column (see the comment above), in the standard's order.
ANNEX_E_BASIC: dict[str, str] = _load_profile()

#: Order of strictness used to resolve a combined code: the first part in this order wins.
STRICTNESS: tuple[str, ...] = ("X", "Z", "D", "C", "U", "K")

#: File-meta attributes that name the sending / receiving station (like the profile's
#: Scheduled/Performed Station AE Title, which are X): removed from a de-identified file.
_META_REMOVE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                "ReceivingApplicationEntityTitle", "SourcePresentationAddress",
                "SendingPresentationAddress", "ReceivingPresentationAddress", "PrivateInformation",
                "PrivateInformationCreatorUID")

#: What :func:`deidentify_dataset` writes into De-identification Method (0012,0063) (LO, <= 64 chars).
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile; C=remove; keyed-hash UIDs (medrobust)"

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY: dict[str, Any] = {
    "AE": _DUMMY_TEXT, "AS": "000Y", "CS": _DUMMY_TEXT, "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "LO": _DUMMY_TEXT, "LT": _DUMMY_TEXT, "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT, "ST": _DUMMY_TEXT, "UC": _DUMMY_TEXT, "UT": _DUMMY_TEXT, "UR": "urn:anonymized",
    "FL": 0.0, "FD": 0.0, "SS": 0, "US": 0, "SL": 0, "UL": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"\0\0", "OW": b"\0\0", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8,
    "UN": b"\0\0",
}


def resolve_action(code: str) -> str:
    """The single action applied for a (possibly combined) code: its strictest part.

    Args:
        code: an action code of Table E.1-1 (``X``, ``Z``, ``D``, ``C``, ``U``, ``K``), or several joined
            by ``/``; a trailing ``*`` is ignored.

    Returns:
        One of :data:`STRICTNESS`: the part that comes first in that order.

    Raises:
        ValueError: a part is not a known action code.

    Example:
        >>> resolve_action("X/Z/D"), resolve_action("Z/D"), resolve_action("X/Z/U*"), resolve_action("U")
        ('X', 'Z', 'X', 'U')
    """
    parts = [p.strip().rstrip("*") for p in code.split("/")]
    unknown = [p for p in parts if p not in STRICTNESS]
    if unknown:
        raise ValueError(f"unknown Annex E action code {code!r}; allowed parts: {list(STRICTNESS)}")
    return min(parts, key=STRICTNESS.index)


def _uid_pseudonym(key: bytes, uid: str) -> str:
    """A keyed-hash replacement UID under the 2.25 root (PS3.5 B.2), at most 64 characters."""
    digest = hmac.new(key, f"uid:{uid}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _is_registered_uid(value: str) -> bool:
    """A UID defined by the standard (SOP classes, transfer syntaxes, coding schemes...)."""
    from pydicom.uid import UID_dictionary

    return value in UID_dictionary


def _vr_of(keyword: str) -> str | None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return None if tag is None else dictionary_VR(tag)


def deidentify_facts(facts: dict[str, str], key: bytes) -> dict[str, str]:
    """Apply the basic profile to header attributes kept for the manifest (keyword -> value).

    The code of each keyword comes from :data:`ANNEX_E_BASIC`, resolved to its strictest part
    (:func:`resolve_action`): X, Z, D and C drop the attribute (an empty or dummy value carries no
    information worth a column), U replaces the UID with a keyed-hash UID, K keeps it. Attributes
    the profile does not list are kept (the caller passes technical attributes from an explicit
    allow-list), except UIDs that are not registered DICOM UIDs: those are replaced like U.

    Args:
        facts: DICOM keyword -> value, e.g. :attr:`DecodedImage.facts <medrobust.data.dicom.DecodedImage.facts>`.
        key: the pseudonymisation key (:func:`load_key`), for replaced UIDs.

    Returns:
        The facts that may be written (keyword -> value), UIDs replaced where required.
    """
    out: dict[str, str] = {}
    for keyword, value in facts.items():
        code = ANNEX_E_BASIC.get(keyword)
        action = resolve_action(code) if code else "K"
        if action == "K" and _vr_of(keyword) == "UI" and value and not _is_registered_uid(value):
            action = "U"
        if action == "K":
            out[keyword] = value
        elif action == "U":
            out[keyword] = _uid_pseudonym(key, value)
    return out


# ----------------------------------------------------------------------------------------------
# whole data sets
# ----------------------------------------------------------------------------------------------
def _is_curve(tag: BaseTag) -> bool:
    return 0x5000 <= tag.group <= 0x501E and tag.group % 2 == 0


def _is_overlay(tag: BaseTag) -> bool:
    return 0x6000 <= tag.group <= 0x601E and tag.group % 2 == 0


def _replace_uids(elem: DataElement, key: bytes) -> None:
    values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
    new = [_uid_pseudonym(key, str(v).strip("\0 ")) for v in values if v not in (None, "")]
    elem.value = new if len(new) > 1 else (new[0] if new else None)


def _dummy(elem: DataElement, key: bytes) -> None:
    if elem.VR == "SQ":
        elem.value = [Dataset()]  # one empty item: "a non-zero length value" for a sequence
    elif elem.VR == "UI":
        if elem.value:
            _replace_uids(elem, key)
        else:
            elem.value = _uid_pseudonym(key, "dummy")
    else:
        elem.value = _DUMMY.get(elem.VR, _DUMMY_TEXT)


def _clean(ds: Dataset, key: bytes, stats: Counter[str]) -> None:
    """Apply the profile to ``ds`` in place, recursing into sequence items."""
    ds.remove_private_tags()
    overlay_groups = {t.group for t in ds.keys() if _is_overlay(t) and t.element in (0x3000, 0x4000)}
    for tag in list(ds.keys()):
        if _is_curve(tag) or tag.group in overlay_groups:
            del ds[tag]
            stats["X"] += 1
            continue
        elem = ds[tag]
        keyword = elem.keyword
        if not keyword and tag.element != 0x0000:
            del ds[tag]  # a public tag pydicom does not know: its meaning, and risk, are unknown
            stats["unknown"] += 1
            continue
        code = ANNEX_E_BASIC.get(keyword)
        action = resolve_action(code) if code else "K"
        if action == "K" and elem.VR == "UI" and elem.value and not all(
            _is_registered_uid(str(v)) for v in (elem.value if isinstance(elem.value, MultiValue) else [elem.value])
        ):
            action = "U"  # an instance UID the table does not list (newer or module-specific)
        stats[action] += 1
        if action in ("X", "C"):
            del ds[tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else None
        elif action == "D":
            _dummy(elem, key)
        elif action == "U":
            _replace_uids(elem, key)
        elif elem.VR == "SQ":  # K: keep the sequence, clean its items
            for item in elem.value:
                _clean(item, key, stats)


def deidentify_dataset(ds: Dataset, key: bytes) -> Dataset:
    """A de-identified copy of ``ds`` under the Basic Application Level Confidentiality Profile.

    Every attribute of :data:`ANNEX_E_BASIC` gets its (strictest) action: X removed, Z emptied,
    D a dummy value of its VR (a sequence: one empty item), U a keyed-hash UID (:func:`_uid_pseudonym`,
    the same input UID gives the same output under one key, so references between instances stay
    linked), K kept, C removed. Sequences not listed are kept and their items cleaned the same way.
    Private attributes, curves (50xx) and overlay groups (60xx) are removed, as are public tags
    pydicom does not know and instance UIDs the table misses (replaced, U). The file meta's Media
    Storage SOP Instance UID gets the same replacement as SOP Instance UID; station AE titles in the
    file meta are removed and the 128-byte preamble is zeroed. Pixel data is not touched (burned-in
    text is not detected). Finally Patient Identity Removed = YES, De-identification Method,
    De-identification Method Code Sequence (DCM 113100) and Longitudinal Temporal Information
    Modified = REMOVED are set.

    Args:
        ds: the data set (not modified).
        key: the pseudonymisation key (:func:`load_key`).

    Returns:
        The de-identified copy.

    Example:
        >>> out = deidentify_dataset(pydicom.dcmread(path), load_key())  # doctest: +SKIP
        >>> out.PatientIdentityRemoved  # doctest: +SKIP
        'YES'
    """
    out = copy.deepcopy(ds)
    stats: Counter[str] = Counter()
    _clean(out, key, stats)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        for keyword in _META_REMOVE:
            if keyword in meta:
                delattr(meta, keyword)
        if meta.get("MediaStorageSOPInstanceUID"):
            meta.MediaStorageSOPInstanceUID = _uid_pseudonym(key, str(meta.MediaStorageSOPInstanceUID))
    if getattr(out, "preamble", None):
        out.preamble = b"\0" * 128
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = [code]
    out.LongitudinalTemporalInformationModified = "REMOVED"
    log.debug("de-identified a data set: %s", dict(stats))
    return out


__all__ = ["ANNEX_E_BASIC", "DEIDENTIFICATION_METHOD", "STRICTNESS", "deidentify_dataset", "deidentify_facts",
           "load_key", "pseudonym", "resolve_action"]
