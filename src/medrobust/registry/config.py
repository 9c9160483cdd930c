"""``register:`` of params.yaml: the registered model's name and the gates."""

from __future__ import annotations

from medrobust.config import StrictModel
from medrobust.registry.gates import GatesConfig


class RegisterConfig(StrictModel):
    """``register``: the MLflow registered model and its robustness gates."""

    model_name: str = "medrobust-classifier"
    gates: GatesConfig = GatesConfig()


__all__ = ["RegisterConfig"]
