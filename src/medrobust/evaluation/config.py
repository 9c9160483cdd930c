"""``evaluate:`` of params.yaml: the attack suite, the gradient-masking checks, the natural shifts.

Fields of :class:`EvaluateConfig` (its class docstring is the JSON Schema's description, so they are listed here):
``attacks`` (default FGSM and PGD-20 at 2, 4 and 8/255, AutoAttack at 8/255 with 30 APGD steps and 300 Square
queries), ``batch_size`` (points per attack batch, default 128), ``early_stop`` (attack only points still classified
correctly: same numbers, faster), ``masking`` (:class:`MaskingConfig`) and ``shifts`` (:class:`ShiftsConfig`).
"""

from __future__ import annotations

from pydantic import Field

from medrobust.attacks.spec import AttackSpec
from medrobust.config import Seq, StrictModel
from medrobust.evaluation.masking import MaskingConfig
from medrobust.evaluation.shifts import ShiftsConfig


class EvaluateConfig(StrictModel):
    """``evaluate``: every (attack, norm, ε) of ``attacks`` attacks the trained model itself."""

    attacks: Seq[AttackSpec] = (
        AttackSpec(name="fgsm", eps=(2 / 255, 4 / 255, 8 / 255)),
        AttackSpec(name="pgd", eps=(2 / 255, 4 / 255, 8 / 255), steps=20, random_start=True),
        AttackSpec(name="autoattack", eps=(8 / 255,), steps=30, n_queries=300),
    )
    batch_size: int = Field(128, ge=1, le=100_000)
    early_stop: bool = True  # attack only points still classified correctly (same numbers, faster)
    masking: MaskingConfig = MaskingConfig()
    shifts: ShiftsConfig = ShiftsConfig()


__all__ = ["EvaluateConfig", "MaskingConfig", "ShiftsConfig"]
