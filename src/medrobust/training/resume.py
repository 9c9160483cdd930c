"""Resuming a killed training run where it stopped, bit for bit.

After every epoch the loop writes ``state.pt`` into a resume folder that lives beside the stage's
output, outside the atomic temporary folder a kill throws away: the model, the optimiser and the
schedule, every random generator in play (the loop's data-order generator, torch's CPU and CUDA
generators, NumPy's and Python's), the training method's own state (its generators and running
statistics: ``TrainingMethod.state_dict``), the history so far and the best epoch's weights. The next run
with the same key (the stage's params and data) starts at the next epoch and computes exactly what
the uninterrupted run would have: on CPU, the same ``model.pt`` bytes. A different key (params or
data changed) starts from scratch. Written atomically (temporary file, then rename); read with
``torch.load(weights_only=True)``: tensors, numbers and strings only.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(s: dict[str, Any]) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def save(folder: Path, *, key: str, epoch: int, model: torch.nn.Module, optimizer: Any, scheduler: Any,
         generator: torch.Generator, history: list[dict[str, float]], best_epoch: int,
         best: tuple[float, dict[str, torch.Tensor]] | None, method: dict[str, Any] | None = None) -> None:
    """Write the state after ``epoch`` (1-based) epochs into ``folder/state.pt`` (atomically).

    ``method`` is the training method's ``state_dict()`` (its generators and running statistics).
    """
    folder.mkdir(parents=True, exist_ok=True)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(), "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "history": history, "best_epoch": best_epoch,
        "best_score": None if best is None else best[0], "best_state": None if best is None else best[1],
        "method": method or {},
    }
    tmp = folder / f".{STATE_FILE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)


def load(folder: Path | None, key: str) -> dict[str, Any] | None:
    """The saved state for ``key``, or None (no folder, no state, or a state of other params or data)."""
    if folder is None or not (folder / STATE_FILE).is_file():
        return None
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable state (cut off by a kill mid-write) is not resumed
        log.warning("%s: not resuming from an unreadable state (%s)", folder / STATE_FILE, exc)
        return None
    if state.get("key") != key:
        log.info("%s: saved for other params or data; training from the start", folder / STATE_FILE)
        return None
    return state


def restore(state: dict[str, Any], *, model: torch.nn.Module, optimizer: Any, scheduler: Any,
            generator: torch.Generator, method: Any = None) -> None:
    """Put the saved model, optimiser, schedule and random generators back, and ``method``'s own state
    (a ``TrainingMethod``: ``load_state_dict``) when given."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    _set_numpy_state(state["numpy"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if method is not None:
        method.load_state_dict(state.get("method", {}))


__all__ = ["STATE_FILE", "load", "restore", "save"]
