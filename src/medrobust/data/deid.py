"""Pseudonymisation: keyed hashes (HMAC-SHA256) replace patient and instance identifiers.

The key never lives in params.yaml or in any output. It comes from the environment variable
``MEDROBUST_PSEUDONYM_KEY``; when that is unset, a random key is created once in
``~/.config/medrobust/pseudonym.key`` (mode 600), so repeated runs on one machine give the same
pseudonyms while nobody without the key can map a pseudonym back by hashing candidate IDs.

Nothing else from a DICOM header leaves ingest except non-identifying technical facts
(Modality, PhotometricInterpretation, BitsStored, Rows, Columns).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

KEY_ENV = "MEDROBUST_PSEUDONYM_KEY"
KEY_FILE_ENV = "MEDROBUST_PSEUDONYM_KEY_FILE"


def _default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV, Path.home() / ".config" / "medrobust" / "pseudonym.key"))


def load_key() -> bytes:
    """The pseudonymisation key: from the environment, else a local key file (created if absent)."""
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
    """A stable pseudonym for ``value`` of a given ``kind`` (e.g. ``patient``, ``image``)."""
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:3]}-{digest[:length]}"


# ----------------------------------------------------------------------------------------------
# DICOM PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile.
# Action codes: D dummy value, Z zero-length/dummy, X remove, K keep, C clean, U replace UID
# (combinations such as "X/Z" mean: whichever the IOD allows; for data we *keep* the strictest
# applies: X). Only attributes that could ever reach a medrobust output need an entry here, but
# the table is the profile's, so a new kept tag is filtered correctly without more code.
# ----------------------------------------------------------------------------------------------
ANNEX_E_BASIC: dict[str, str] = {
    "PatientID": "Z",
    "PatientName": "Z",
    "PatientBirthDate": "Z",
    "PatientSex": "Z",
    "PatientAge": "X",
    "AccessionNumber": "Z",
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "StudyDate": "Z",
    "InstitutionName": "X",
}


def _uid_pseudonym(key: bytes, uid: str) -> str:
    """A keyed-hash replacement UID under the 2.25 root (PS3.5 B.2), at most 64 characters."""
    digest = hmac.new(key, f"uid:{uid}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def deidentify_facts(facts: dict[str, str], key: bytes) -> dict[str, str]:
    """Apply the basic profile to header attributes we keep (keyword -> value).

    X, Z and D drop the value (an empty or dummy value carries no information worth keeping),
    U replaces a UID with a keyed-hash UID, K and C keep it. Attributes not in the profile are
    kept: the caller only passes technical attributes from an explicit allow-list.
    """
    out: dict[str, str] = {}
    for tag, value in facts.items():
        action = ANNEX_E_BASIC.get(tag, "K")
        if action in ("K", "C"):
            out[tag] = value
        elif action == "U":
            out[tag] = _uid_pseudonym(key, value)
    return out
