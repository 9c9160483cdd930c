"""The bottom floor: helpers every family uses, importing nothing of medrobust but each other.

* :mod:`~medrobust.utils.io` — atomic stage outputs, SHA-256, JSON;
* :mod:`~medrobust.utils.runtime` — logging, seeding, device selection;
* :mod:`~medrobust.utils.registry` — the decorator-filled registries of every family;
* :mod:`~medrobust.utils.paths` — each stage's default output location.
"""

from medrobust.utils.io import (atomic_output_dir, atomic_write_json, atomic_write_text, dvc_md5, pid_alive, read_csv,
                                read_json, sha256_bytes, sha256_file, write_csv, write_json)
from medrobust.utils.registry import Registry
from medrobust.utils.runtime import resolve_device, seed_everything, setup_logging

__all__ = ["Registry", "atomic_output_dir", "atomic_write_json", "atomic_write_text", "dvc_md5", "pid_alive", "read_csv", "read_json", "resolve_device", "seed_everything",
           "setup_logging", "sha256_bytes", "sha256_file", "write_csv", "write_json"]
