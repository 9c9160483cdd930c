"""One attack of the suite on its own: the unit of the Kubeflow pipeline's ``dsl.ParallelFor`` fan-out.

On a cluster the evaluation's white-box attacks run side by side, one task per entry of
``evaluate.attacks`` (each on its own GPU), so the evaluation waits for the slowest attack instead
of their sum. Each task writes an *attack run*: the per-point :class:`~medrobust.evaluation.conditions.Condition`
of its attack at every ε, and what it was computed from. The merge (the ``evaluate`` task) then
computes every figure of ``metrics.json`` from these conditions exactly as a single-process
evaluation does (:func:`medrobust.evaluation.suite.evaluate_model` with ``precomputed``), so the
two give the same ``metrics.json``.

An attack run is trusted only when it is bound to what is being evaluated:

* the SHA-256 of the evaluated ``model.pt`` and of the dataset's ``manifest.csv`` must match, or
  :class:`AttackRunMismatch` stops the merge (a wiring error, never silently averaged in);
* its attack spec, seed and early-stop setting must equal the suite's entry of the same key; when
  params were overridden at run time and they differ, the run is set aside with a warning and the
  merge runs that attack itself. So does it for an attack that has no run.

Layout of an attack run folder: ``attack.json`` (the binding above, the ε labels and seconds) and
``conditions.npz`` (``logits_<i>``, ``robust_<i>``, ``clean_correct_<i>`` for the i-th ε; loaded
with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.attacks.spec import AttackSpec
from medrobust.config import eps_label
from medrobust.evaluation import conditions as cond

log = logging.getLogger(__name__)

RUN_FILE = "attack.json"
ARRAYS_FILE = "conditions.npz"
FORMAT = 1


class AttackRunMismatch(RuntimeError):
    """An attack run was computed on another model or dataset than the one being evaluated."""


def binding(spec: AttackSpec, seed: int, early_stop: bool) -> dict[str, Any]:
    """What an attack run must share with the suite entry it stands in for."""
    return {"spec": spec.model_dump(mode="json"), "seed": int(seed), "early_stop": bool(early_stop)}


def run_attack(model: torch.nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, batch_size: int,
               early_stop: bool, seed: int) -> dict[str, cond.Condition]:
    """Every ε of one suite entry on the test images: ``{ε label: condition}``."""
    out = {}
    for eps in spec.eps:
        c = cond.attacked(model, spec, eps, x, y, batch_size, early_stop, seed)
        out[eps_label(eps)] = c
        log.info("%s ε=%s: robust accuracy %.3f (%.1f s)", spec.key, eps_label(eps),
                 float(c.robust.mean()) if len(c.robust) else 0.0, c.seconds)
    return out


def save(out_dir: Path, spec: AttackSpec, conditions: dict[str, cond.Condition], *, seed: int, early_stop: bool,
         model_sha256: str, dataset_sha256: str) -> None:
    """Write one attack run into ``out_dir`` (which must exist)."""
    labels = list(conditions)
    arrays: dict[str, np.ndarray] = {}
    for i, label in enumerate(labels):
        c = conditions[label]
        arrays[f"logits_{i}"], arrays[f"robust_{i}"], arrays[f"clean_correct_{i}"] = c.logits, c.robust, c.clean_correct
    np.savez(out_dir / ARRAYS_FILE, **arrays)
    meta = {"format": FORMAT, "key": spec.key, **binding(spec, seed, early_stop), "model_sha256": model_sha256,
            "dataset_sha256": dataset_sha256, "eps": labels,
            "seconds": {label: round(conditions[label].seconds, 3) for label in labels}}
    (out_dir / RUN_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load(dirs: Iterable[Path], suite: Iterable[AttackSpec], *, seed: int, early_stop: bool, model_sha256: str,
         dataset_sha256: str) -> dict[tuple[str, str], cond.Condition]:
    """The attack runs in ``dirs`` that stand in for entries of ``suite``: ``{(attack key, ε label): condition}``.

    Raises:
        AttackRunMismatch: a run was made on another model or dataset, or a folder is not an attack run.
    """
    wanted = {s.key: binding(s, seed, early_stop) for s in suite}
    out: dict[tuple[str, str], cond.Condition] = {}
    for d in map(Path, dirs):
        try:
            meta = json.loads((d / RUN_FILE).read_text())
        except (OSError, ValueError) as e:
            raise AttackRunMismatch(f"{d}: not an attack run ({RUN_FILE} unreadable: {e}); pass the attack "
                                    "task's 'attacked' outputs") from None
        for what, expected in (("model_sha256", model_sha256), ("dataset_sha256", dataset_sha256)):
            if meta.get(what) != expected:
                raise AttackRunMismatch(
                    f"attack run {meta.get('key')} in {d} has {what} {str(meta.get(what))[:12]}…, but the evaluated "
                    f"one is {expected[:12]}…: it was computed on another {what.split('_')[0]}; rerun its attack task")
        key = meta["key"]
        if key not in wanted or {k: meta.get(k) for k in wanted[key]} != wanted[key]:
            log.warning("attack run %s (%s) does not match evaluate.attacks as run now; the merge attacks itself", key, d)
            continue
        with np.load(d / ARRAYS_FILE, allow_pickle=False) as z:
            for i, label in enumerate(meta["eps"]):
                out[(key, label)] = cond.Condition(z[f"logits_{i}"], z[f"robust_{i}"], z[f"clean_correct_{i}"],
                                                   float(meta["seconds"][label]))
    return out


__all__ = ["ARRAYS_FILE", "RUN_FILE", "AttackRunMismatch", "binding", "load", "run_attack", "save"]
