"""Attack registry: ``get_attack(name, model, **params)(images, labels) -> adversarial images``.

Every attack works in [0, 1] pixel space and honours the contract in :mod:`medrobust.attacks.base`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medrobust.attacks.base import Attack, eval_mode
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.pgd import PGD

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD}


def get_attack(name: str, model: nn.Module, **params: Any) -> Attack:
    """Instantiate a registered attack by name.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
    """
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](model, **params)


def from_spec(spec: Any, model: nn.Module, eps: float, seed: int | None = None) -> Attack:
    """Build an attack from a :class:`medrobust.config.AttackSpec` at one ``eps``."""
    kwargs: dict[str, Any] = {"eps": eps, "norm": spec.norm, "seed": seed}
    if spec.name != "fgsm":
        kwargs.update(steps=spec.steps, step_size=spec.step_size, random_start=spec.random_start)
    return get_attack(spec.name, model, **kwargs)


__all__ = ["ATTACKS", "Attack", "get_attack", "from_spec", "eval_mode"]
