"""Saving and loading models: a ``state_dict`` plus its JSON :class:`~medrobust.models.ModelSpec`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from medrobust.models.classifier import Classifier, ModelSpec, build_model


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path, name: str = "model") -> Path:
    """Write ``<name>.pt`` (the ``state_dict``, on the CPU) and ``<name>.json`` (the spec) into ``out_dir``.

    Args:
        model: the model whose ``state_dict`` is saved (it stays where it is).
        spec: the spec it was built from.
        out_dir: the folder (created if missing; existing files are overwritten).
        name: the files' stem.

    Returns:
        The path of the weights file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / f"{name}.pt")
    (out_dir / f"{name}.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir / f"{name}.pt"


def load_model(model_dir: str | Path, name: str = "model") -> tuple[Classifier, ModelSpec]:
    """Load a model saved by :func:`save_model` (weights only: no code is unpickled).

    Args:
        model_dir: the folder holding ``<name>.pt`` and ``<name>.json``.
        name: the files' stem.

    Returns:
        (the model in eval mode, its spec).

    Raises:
        FileNotFoundError: a file is missing.
    """
    model_dir = Path(model_dir)
    spec = ModelSpec.from_dict(json.loads((model_dir / f"{name}.json").read_text()))
    model = build_model(spec)
    state = torch.load(model_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, spec


__all__ = ["load_model", "save_model"]
