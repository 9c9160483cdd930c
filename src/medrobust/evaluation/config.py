"""``evaluate:`` of params.yaml: the attack suite, the operating point and calibration, the intervals,
the gradient-masking checks, the natural shifts, the slices, saliency, the randomized-smoothing
certificates and the report.

Each field carries a ``description`` (shown by editors through ``params.schema.json``). The defaults
are sized for a CPU run of the built-in data; raise ``intervals.bootstrap_resamples`` (e.g. 2000),
``shifts.under_attack: suite`` and AutoAttack's budget for a final report.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from medrobust.attacks.spec import AttackSpec
from medrobust.config import InRegistry, Seq, StrictModel, field_error
from medrobust.evaluation.calibration import OperatingPointConfig
from medrobust.evaluation.certified import CertifyConfig
from medrobust.evaluation.masking import MaskingConfig
from medrobust.evaluation.shifts import SEVERITIES, SHIFTS
from medrobust.evaluation.stats import IntervalConfig

#: manifest columns the evaluation always slices by (when the manifest has them)
DEFAULT_SLICE_COLUMNS = ("modality", "view_position", "laterality", "body_part", "source")


class ShiftsConfig(StrictModel):
    """``evaluate.shifts``: natural shifts, scored like MedMNIST-C."""

    enabled: bool = True
    names: Seq[Annotated[str, InRegistry(SHIFTS)]] = Field(
        (), description="shifts to apply; empty: the default set of the data's DICOM Modality")
    severities: Seq[Literal[1, 2, 3, 4, 5]] = SEVERITIES
    under_attack: Literal["none", "strongest", "suite"] = Field(
        "strongest", description="after each shift, attack at the gate ε with the suite's strongest attack there "
                                 "(cheap), with every attack of the suite at that norm and ε (their worst case, "
                                 "thorough), or not at all")
    attack_severity: Literal[1, 2, 3, 4, 5] = Field(3, description="the severity the shifted attack runs at")


class SlicesConfig(StrictModel):
    """``evaluate.slices``: metrics per value of manifest columns (modality, view, laterality ...)."""

    columns: Seq[str] = Field((), description="manifest columns to slice by, besides modality, view_position, "
                                               "laterality, body_part and source")
    min_slice_size: int = Field(10, ge=1, description="smaller slices are listed as too small, not scored")


class SaliencyConfig(StrictModel):
    """``evaluate.saliency``: Grad-CAM and input-gradient maps of clean and adversarial test images."""

    enabled: bool = True
    n_images: int = Field(3, ge=1, le=16, description="images per row group: robust ones and flipped ones")


class EvaluateConfig(StrictModel):
    """``evaluate``: every (attack, norm, ε) of ``attacks`` attacks the trained model itself."""

    attacks: Seq[AttackSpec] = (
        AttackSpec(name="fgsm", eps=(2 / 255, 4 / 255, 8 / 255)),
        AttackSpec(name="pgd", eps=(2 / 255, 4 / 255, 8 / 255), steps=20, random_start=True),
        AttackSpec(name="autoattack", eps=(8 / 255,), steps=30, n_queries=300),
    )
    batch_size: int = Field(128, ge=1, le=100_000)
    early_stop: bool = True  # attack only points still classified correctly (same numbers, faster)
    targeted_false_negatives: bool = Field(
        True, description="binary tasks: also push every detected finding towards the negative class with each "
                          "attack that has a targeted mode (the attack-induced false-negative rate)")
    operating_point: OperatingPointConfig = OperatingPointConfig()
    intervals: IntervalConfig = IntervalConfig()
    masking: MaskingConfig = MaskingConfig()
    shifts: ShiftsConfig = ShiftsConfig()
    slices: SlicesConfig = SlicesConfig()
    saliency: SaliencyConfig = SaliencyConfig()
    certify: CertifyConfig = CertifyConfig()

    @model_validator(mode="after")
    def _one_entry_per_attack(self) -> EvaluateConfig:
        """metrics.json (and the pipeline's fan-out) name an attack by ``<name>_<norm>``: one entry each."""
        keys = [a.key for a in self.attacks]
        if dupes := sorted({k for k in keys if keys.count(k) > 1}):
            raise field_error("attacks", f"{', '.join(dupes)} appear(s) more than once; list each attack and norm "
                                         "once, with all its epsilons in one eps list")
        return self


__all__ = ["DEFAULT_SLICE_COLUMNS", "CertifyConfig", "EvaluateConfig", "MaskingConfig", "SaliencyConfig", "ShiftsConfig",
           "SlicesConfig"]
