"""``pretrain``: RAN's upstream stage (``medrobust pretrain``) — noise ratios, the attacks, the CLIP, the heads.

:class:`PretrainConfig` holds ``noise_ratios`` (each in [0, 1], distinct to the percent; the clean model is
always pre-trained first, since it is the attacks' surrogate), the pretraining loop (``epochs``,
``batch_size``, ``lr``, ``weight_decay``), the text tower (``context_length``, ``text_width``,
``text_heads``, ``text_layers``), the attacks that make the noisy pairs (``image_eps``, ``image_steps``,
``caption_edits``, ``modalities``) and ``downstream`` (:class:`DownstreamConfig`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from medrobust.config import Eps, Seq, StrictModel

#: the light-weight heads trained on the frozen image tower; ``nmtune`` is RAN's objective without its margin
#: term (NMTune's covariance and consistency regularisers)
HEADS = ("linear_probe", "mlp_tuning", "nmtune", "ran")
Head = Literal["linear_probe", "mlp_tuning", "nmtune", "ran"]


class DownstreamConfig(StrictModel):
    """``pretrain.downstream``: the heads on the frozen pre-trained image tower and how they are tested.

    In distribution: the clean test split. Out of distribution: the test split under the natural
    shift ``shift`` at ``shift_severity`` (:mod:`medrobust.evaluation.shifts`). Both clean and under
    L∞ PGD (``attack_steps`` steps, random start) at ``attack_eps``.
    """

    heads: Seq[Head] = HEADS
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=2, le=100_000)
    lr: float = Field(3e-3, ge=1e-8, le=10.0)
    attack_eps: Eps = 2 / 255
    attack_steps: int = Field(10, ge=1, le=10_000)
    shift: str = "contrast_low"
    shift_severity: int = Field(1, ge=1, le=5)


class PretrainConfig(StrictModel):
    """``pretrain``: RAN's noisy vision-language pretraining (:mod:`medrobust.pretrain`), then its heads."""

    noise_ratios: Seq[float] = (0.0, 0.05, 0.1, 0.2, 0.3)
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(32, ge=2, le=100_000)
    lr: float = Field(3e-3, ge=1e-8, le=10.0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    context_length: int = Field(24, ge=8, le=77)
    text_width: int = Field(64, ge=8, le=4096)
    text_heads: int = Field(2, ge=1, le=64)
    text_layers: int = Field(2, ge=1, le=48)
    image_eps: Eps = 8 / 255
    image_steps: int = Field(5, ge=1, le=10_000)
    caption_edits: int = Field(1, ge=1, le=10)
    modalities: Literal["both", "image", "text"] = "both"
    downstream: DownstreamConfig = DownstreamConfig()

    @field_validator("noise_ratios")
    @classmethod
    def _ratios(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("at least one noise ratio is needed, e.g. [0.0, 0.1]")
        bad = [r for r in value if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"noise ratios must be in [0, 1] (0.1 is 10 %), got {bad}")
        percents = [round(r * 100) for r in value]
        if len(set(percents)) != len(percents):
            raise ValueError(f"noise ratios must differ by at least 1 % (they name the output files), got {list(value)}")
        return tuple(sorted(value))


__all__ = ["HEADS", "DownstreamConfig", "Head", "PretrainConfig"]
