"""Attack registry: ``get_attack(name, model, **params)(images, labels) -> adversarial images``.

| name | paper | norm | defaults |
|---|---|---|---|
| ``fgsm`` | Goodfellow et al. 2015 | L∞ | ε=8/255 |
| ``bim`` | Kurakin et al. 2017 | L∞ | ε=8/255, α=2/255, 10 steps (0 → Kurakin's rule) |
| ``pgd`` | Madry et al. 2018 | L∞ | ε=8/255, 10 steps, α=2.5ε/steps, random start |
| ``pgdl2`` | Madry et al. 2018 | L2 | ε=1.0, 10 steps, α=0.2, random start |
| ``mifgsm`` | Dong et al. 2018 | L∞ | ε=8/255, α=2/255, 10 steps, decay 1.0 |
| ``cw`` | Carlini & Wagner 2017 | L2 | c=1, κ=0, lr=0.01, 100 steps; only adversarials with ‖δ‖₂ ≤ ε |
| ``apgd_ce`` / ``apgd_dlr`` / ``apgd_margin`` | Croce & Hein 2020 | L∞, L2 | 100 steps, 1 restart, ρ=0.75, momentum 0.75 |
| ``square`` | Andriushchenko et al. 2020 | L∞ | score-based black box, 1000 queries, p_init=0.8 |
| ``autoattack`` | Croce & Hein 2020 (adapted) | L∞, L2 | APGD-CE → APGD-margin/DLR(-T) → Square |

Every attack works in [0, 1] pixel space and honours the contract in :mod:`medrobust.attacks.base`;
targeted mode (``targeted=True``, labels = target classes) is supported by every attack but
``autoattack`` (APGD's targeted mode picks its own targets; see :mod:`medrobust.attacks.apgd`).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medrobust.attacks.apgd import APGD, APGDCE, APGDDLR, APGDMargin
from medrobust.attacks.autoattack import AutoAttack
from medrobust.attacks.base import Attack, IterativeAttack, eval_mode
from medrobust.attacks.bim import BIM
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.mifgsm import MIFGSM
from medrobust.attacks.pgd import PGD
from medrobust.attacks.pgdl2 import PGDL2

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "pgdl2": PGDL2,
    "mifgsm": MIFGSM,
    "apgd_ce": APGDCE,
    "apgd_dlr": APGDDLR,
    "apgd_margin": APGDMargin,
    "autoattack": AutoAttack,
}
try:  # written separately; registered here
    from medrobust.attacks.cw import CW

    ATTACKS["cw"] = CW
except ImportError:  # pragma: no cover
    pass
try:
    from medrobust.attacks.square import Square

    ATTACKS["square"] = Square
except ImportError:  # pragma: no cover
    pass


def get_attack(name: str, model: nn.Module, **params: Any) -> Attack:
    """Instantiate a registered attack by name.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
        TypeError: for a parameter the attack does not take, listing those it does.
    """
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    unknown = set(params) - set(attack_params(name))
    if unknown:
        raise TypeError(f"attack {name!r} takes no parameter {sorted(unknown)[0]!r}; "
                        f"allowed: {', '.join(attack_params(name))}")
    return cls(model, **params)


def attack_params(name: str) -> list[str]:
    """The keyword parameters of a registered attack (besides the model)."""
    sig = inspect.signature(ATTACKS[name].__init__)
    return [p for p in sig.parameters if p not in ("self", "model")]


def from_spec(spec: Any, model: nn.Module, eps: float, seed: int | None = None) -> Attack:
    """Build an attack from a :class:`medrobust.config.AttackSpec` at one ``eps``."""
    allowed = set(attack_params(spec.name))
    kwargs: dict[str, Any] = {"eps": eps, "norm": spec.norm}
    if "seed" in allowed:
        kwargs["seed"] = seed
    for key in ("steps", "step_size", "random_start", "n_restarts", "n_queries"):
        value = getattr(spec, key, None)
        if value is not None and key in allowed:
            kwargs[key] = value
    return get_attack(spec.name, model, **kwargs)


__all__ = ["ATTACKS", "APGD", "Attack", "IterativeAttack", "attack_params", "eval_mode", "from_spec", "get_attack",
           "BIM", "FGSM", "MIFGSM", "PGD", "PGDL2", "APGDCE", "APGDDLR", "APGDMargin", "AutoAttack"]
