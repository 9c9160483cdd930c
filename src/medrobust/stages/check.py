"""The first DVC stage — check: validate params.yaml, and write what each stage reads of it.

``dvc repro`` deletes a stage's outputs just before it runs that stage, so a typo in params.yaml
found by the stage itself is found too late. ``check`` runs first: it validates the whole file
(:func:`medrobust.params.load_params`: unknown keys, types, ranges, the gate's attack and ε) and fails
before any other stage has started.

It also writes ``.medrobust/stage-params.yaml``, the params each stage depends on in ``dvc.yaml``: a
short digest per stage (``synthesize``, ``ingest``, ``advgen``, ``train``, ``evaluate``, ``register``) of
the *resolved* settings that stage reads, defaults included. Train's covers only the active method's
settings (``train.methods.<train.method>``), not all sixteen, so editing another method's settings
re-runs nothing; and writing a default into params.yaml changes no digest, so it re-runs nothing either.

Ingest's file dependency is ``data/raw/``: a local input of the active source outside it (a DICOM folder
elsewhere) is not tracked, and check warns about it.

So ``dvc exp show`` has six digest columns beside the values params.yaml sets (it lists every one of
those), and a stage re-runs exactly when what it reads changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from medrobust.params import Params
from medrobust.utils import atomic_write_text, paths

log = logging.getLogger(__name__)

HEADER = ("# Written by `medrobust check` (the check stage of dvc.yaml) from params.yaml: do not edit.\n"
          "# Each stage's digest covers the resolved settings it reads; dvc.yaml's stages depend on them.\n")


def stage_settings(params: Params) -> dict[str, dict[str, Any]]:
    """The resolved settings each stage reads (defaults included), as JSON-able dictionaries.

    Args:
        params: validated params.

    Returns:
        ``{stage: settings}`` for synthesize, ingest, advgen, train, evaluate and register.
    """
    dump = params.model_dump(mode="json")
    train = {**dump["train"], "methods": {params.train.method: dump["train"]["methods"].get(params.train.method)}}
    gate = {k: dump["register"][k] for k in ("gate_attack", "gate_eps", "require_masking_checks",
                                             "require_certificate_soundness", "gates")}
    return {
        "synthesize": {"synthetic": dump["data"]["synthetic"]},
        "ingest": {"seed": dump["seed"], "data": dump["data"], "validation": dump["validation"]},
        "advgen": {"seed": dump["seed"], "device": dump["device"], "advgen": dump["advgen"]},
        "train": {"seed": dump["seed"], "device": dump["device"], "train": train, "mlflow": dump["mlflow"],
                  "gate": {k: gate[k] for k in ("gate_attack", "gate_eps")}},  # train.selection attacks at the gate
        "evaluate": {"seed": dump["seed"], "device": dump["device"], "evaluate": dump["evaluate"], "register": gate},
        "register": {"register": dump["register"], "mlflow": dump["mlflow"]},
    }


#: each file-based source's local inputs (keys of ``data``), which ingest's DVC dependency ``data/raw`` covers
LOCAL_INPUTS: dict[str, tuple[str, ...]] = {
    "synthetic": ("dicom_dir", "labels_csv"), "dicom_folder": ("dicom_dir", "labels_csv"),
    "medmnist": ("medmnist.path",), "ham10000": ("ham10000.images_dir", "ham10000.metadata_csv"),
    "cmmd": ("cmmd.dicom_dir", "cmmd.clinical_table"), "image_folder": ("image_folder.root", "image_folder.groups_csv"),
}


def untracked_inputs(params: Params, root: str | Path = ".") -> list[tuple[str, str]]:
    """The active source's local inputs that lie outside ``data/raw/``, which DVC does not track.

    Args:
        params: validated params.
        root: the repository root (relative inputs are relative to it).

    Returns:
        ``[(key, path)]``, e.g. ``[("data.dicom_dir", "/mnt/export")]``; empty when every input is tracked.
    """
    raw = (Path(root) / paths.RAW).resolve()
    data = params.data.model_dump()
    out = []
    for key in LOCAL_INPUTS.get(params.data.source, ()):
        value: Any = data
        for part in key.split("."):
            value = value[part]
        if value and not (Path(root) / value).resolve().is_relative_to(raw):
            out.append((f"data.{key}", str(value)))
    return out


def digest(settings: dict[str, Any]) -> str:
    """A short, stable digest of ``settings`` (12 hex digits of the SHA-256 of canonical JSON)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run(params: Params, out: str | Path) -> dict[str, Any]:
    """Write ``out`` (``.medrobust/stage-params.yaml``): one digest per stage.

    Args:
        params: params.yaml, already validated (loading it is the check).
        out: the file to write (atomically: a failed run leaves the previous one).

    Returns:
        What was written.
    """
    for key, value in untracked_inputs(params):
        log.warning("%s (%s) is outside %s/: DVC does not track it, so a change there does not re-run ingest; "
                    "move it under %s/ (or run `dvc repro -f ingest`)", key, value, paths.RAW, paths.RAW)
    snapshot = {stage: digest(s) for stage, s in stage_settings(params).items()}
    atomic_write_text(out, HEADER + yaml.safe_dump(snapshot, sort_keys=False))
    log.info("params.yaml is valid (source %s, method %s, %d epochs): %s", params.data.source, params.train.method,
             params.train.epochs, ", ".join(f"{k}={v}" for k, v in snapshot.items()))
    return snapshot


__all__ = ["LOCAL_INPUTS", "digest", "run", "stage_settings", "untracked_inputs"]
