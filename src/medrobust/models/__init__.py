"""Backbones behind a registry. Every model takes [0, 1] images and normalises inside itself.

    >>> model = build_model("small_cnn", num_classes=2, in_channels=1)
    >>> MODELS["resnet18"]

A model is saved as a ``state_dict`` plus a small JSON spec (:class:`ModelSpec`), so loading never
unpickles code (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from medrobust.models.backbones import Normalize, resnet18, small_cnn

MODELS: dict[str, Callable[..., nn.Module]] = {"small_cnn": small_cnn, "resnet18": resnet18}


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    num_classes: int
    in_channels: int = 1
    width: int = 16
    image_size: int = 64
    mean: float = 0.5
    std: float = 0.25


def build_model(spec: ModelSpec) -> nn.Module:
    """A backbone wrapped as ``Sequential(Normalize(mean, std), backbone)``."""
    if spec.backbone not in MODELS:
        raise KeyError(f"unknown backbone {spec.backbone!r}; available: {', '.join(sorted(MODELS))}")
    net = MODELS[spec.backbone](num_classes=spec.num_classes, in_channels=spec.in_channels, width=spec.width)
    return nn.Sequential(Normalize(spec.mean, spec.std, spec.in_channels), net)


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path, name: str = "model") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / f"{name}.pt")
    (out_dir / f"{name}.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir / f"{name}.pt"


def load_model(model_dir: str | Path, name: str = "model") -> tuple[nn.Module, ModelSpec]:
    """Load a model saved by :func:`save_model` (weights only: no code is unpickled)."""
    model_dir = Path(model_dir)
    spec = ModelSpec(**json.loads((model_dir / f"{name}.json").read_text()))
    model = build_model(spec)
    state = torch.load(model_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, spec


__all__ = ["MODELS", "ModelSpec", "build_model", "load_model", "save_model", "Normalize"]
