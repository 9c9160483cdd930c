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
