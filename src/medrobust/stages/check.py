"""The first DVC stage — check: validate params.yaml, and write what each stage reads of it.

``dvc repro`` deletes a stage's outputs just before it runs that stage, so a typo in params.yaml
found by the stage itself is found too late. ``check`` runs first: it validates the whole file
(:func:`medrobust.params.load_params`: unknown keys, types, ranges, the gate's attack and ε) and fails
before any other stage has started.

It also writes ``.medrobust/stage-params.yaml``, the params each stage depends on in ``dvc.yaml``:

* a short digest per stage (``synthesize``, ``ingest``, ``advgen``, ``train``, ``evaluate``,
  ``register``) of the *resolved* settings that stage reads, defaults included: train's covers only
  the active method's settings (``train.methods.<train.method>``), not all sixteen, so editing
  another method's settings re-runs nothing;
* the three settings people compare experiments by: ``source``, ``method`` and ``epochs``.

So ``dvc exp show --param-deps`` has a handful of param columns instead of every leaf of params.yaml,
and a stage re-runs exactly when what it reads changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from medrobust.params import Params
from medrobust.utils import atomic_write_text

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
    gate = {k: dump["register"][k] for k in ("gate_attack", "gate_eps", "require_masking_checks", "gates")}
    return {
        "synthesize": {"synthetic": dump["data"]["synthetic"]},
        "ingest": {"seed": dump["seed"], "data": dump["data"], "validation": dump["validation"]},
        "advgen": {"seed": dump["seed"], "device": dump["device"], "advgen": dump["advgen"]},
        "train": {"seed": dump["seed"], "device": dump["device"], "train": train, "mlflow": dump["mlflow"],
                  "gate": {k: gate[k] for k in ("gate_attack", "gate_eps")}},  # train.selection attacks at the gate
        "evaluate": {"seed": dump["seed"], "device": dump["device"], "evaluate": dump["evaluate"], "register": gate},
        "register": {"register": dump["register"], "mlflow": dump["mlflow"]},
    }


def digest(settings: dict[str, Any]) -> str:
    """A short, stable digest of ``settings`` (12 hex digits of the SHA-256 of canonical JSON)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run(params: Params, out: str | Path) -> dict[str, Any]:
    """Write ``out`` (``.medrobust/stage-params.yaml``): per-stage digests and the readable settings.

    Args:
        params: params.yaml, already validated (loading it is the check).
        out: the file to write (atomically: a failed run leaves the previous one).

    Returns:
        What was written.
    """
    snapshot: dict[str, Any] = {"source": params.data.source, "method": params.train.method,
                                "epochs": params.train.epochs}
    snapshot.update({stage: digest(s) for stage, s in stage_settings(params).items()})
    atomic_write_text(out, HEADER + yaml.safe_dump(snapshot, sort_keys=False))
    log.info("params.yaml is valid: %s", ", ".join(f"{k}={v}" for k, v in snapshot.items()))
    return snapshot


__all__ = ["digest", "run", "stage_settings"]
