"""Training methods behind a registry, chosen by name in params.yaml (``train.method``)."""

from __future__ import annotations

from typing import Any

from medrobust.defenses.base import Defense
from medrobust.defenses.pgd_at import PGDAT
from medrobust.defenses.standard import Standard

DEFENSES: dict[str, type[Defense]] = {"standard": Standard, "pgd_at": PGDAT}


def get_defense(name: str, **params: Any) -> Defense:
    if name not in DEFENSES:
        raise KeyError(f"unknown training method {name!r}; available: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name](**params)


__all__ = ["DEFENSES", "Defense", "get_defense"]
