"""``register:`` of params.yaml: the registered model's name, the gate attack, the gates, and promotion."""

from __future__ import annotations

from pydantic import Field

from medrobust.config import StrictModel
from medrobust.registry.gates import GatesConfig


class PromotionConfig(StrictModel):
    """``register.promotion``: the compare-and-set that moves ``@champion``."""

    retries: int = Field(20, ge=1, description="attempts to take the promotion lease before giving up")
    lease_s: float = Field(120.0, gt=0, description="a lease older than this is stale (its holder died) and is broken")
    backoff_s: float = Field(0.2, gt=0, description="the first wait between attempts; doubles, capped at 5 s")


class RegisterConfig(GatesConfig):
    """``register``: the MLflow registered model, its robustness gates, and the promotion settings."""

    model_name: str = "medrobust-classifier"
    promotion: PromotionConfig = PromotionConfig()


__all__ = ["PromotionConfig", "RegisterConfig"]
