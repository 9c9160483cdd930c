"""Training methods behind a registry, chosen by name in params.yaml (``train.method``)."""

from __future__ import annotations

from typing import Any

import inspect

from medrobust.defenses.arfl import ARFL
from medrobust.defenses.augmix import AugMix, RobustAugMix
from medrobust.defenses.base import Defense
from medrobust.defenses.domain_assimilation import DomainAssimilation
from medrobust.defenses.dpaat import DPAAT
from medrobust.defenses.dsbn import DSBN
from medrobust.defenses.dual_at import DualAT
from medrobust.defenses.fast_at import FastAT
from medrobust.defenses.mart import MART
from medrobust.defenses.pgd_at import PGDAT
from medrobust.defenses.probes import LinearProbe, MLPTuning
from medrobust.defenses.ran import RAN
from medrobust.defenses.rtda import RTDA
from medrobust.defenses.standard import Standard
from medrobust.defenses.trades import TRADES

DEFENSES: dict[str, type[Defense]] = {
    "standard": Standard,
    "pgd_at": PGDAT,
    "trades": TRADES,
    "mart": MART,
    "dual_at": DualAT,
    "fast_at": FastAT,
    "domain_assimilation": DomainAssimilation,
    "dpaat": DPAAT,
    "arfl": ARFL,
    "augmix": AugMix,
    "robust_augmix": RobustAugMix,
    "rtda": RTDA,
    "dsbn": DSBN,
    "ran": RAN,
    "linear_probe": LinearProbe,
    "mlp_tuning": MLPTuning,
}


def get_defense(name: str, seed: int | None = None, **params: Any) -> Defense:
    """Instantiate a training method; ``seed`` goes to methods that draw random numbers themselves."""
    if name not in DEFENSES:
        raise KeyError(f"unknown training method {name!r}; available: {', '.join(sorted(DEFENSES))}")
    cls = DEFENSES[name]
    if seed is not None and "seed" in inspect.signature(cls.__init__).parameters:
        params["seed"] = seed
    return cls(**params)


__all__ = ["DEFENSES", "Defense", "get_defense"]
