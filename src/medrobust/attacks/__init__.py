"""Attack registry: ``get_attack(name, model, **params)(images, labels) -> adversarial images``.

Each attack is one module with one class that registers itself (``@ATTACKS.register()``) under its
``name``; params.yaml names attacks with :class:`~medrobust.attacks.spec.AttackSpec`.

| name | paper | norm | defaults |
|---|---|---|---|
| ``fgsm`` | Goodfellow et al. 2015 | L∞ | ε=8/255 |
| ``bim`` | Kurakin et al. 2017 | L∞ | ε=8/255, α=2/255, 10 steps (0 → Kurakin's rule) |
| ``pgd`` | Madry et al. 2018 | L∞ | ε=8/255, 10 steps, α=2.5ε/steps, random start |
| ``pgdl2`` | Madry et al. 2018 | L2 | ε=1.0, 10 steps, α=0.2, random start |
| ``mifgsm`` | Dong et al. 2018 | L∞ | ε=8/255, α=2/255, 10 steps, decay 1.0 |
| ``cw`` | Carlini & Wagner 2017 | L2 | c=1, κ=0, lr=0.01, 100 steps; keeps ‖δ‖₂ ≤ ε only |
| ``apgd_ce`` / ``apgd_dlr`` / ``apgd_margin`` | Croce & Hein 2020 | L∞, L2 | 100 steps, 1 restart, ρ=0.75, α=0.75 |
| ``square`` | Andriushchenko et al. 2020 | L∞ | score-based black box, 1000 queries, p_init=0.8 |
| ``autoattack`` | Croce & Hein 2020 (adapted) | L∞, L2 | APGD-CE → APGD-margin/DLR(-T) → Square |

Every attack works in [0, 1] pixel space and honours the contract in :mod:`medrobust.attacks.base`;
targeted mode (``targeted=True``, labels = target classes) is supported by every attack but
``autoattack`` (APGD's targeted mode picks its own targets; see :mod:`medrobust.attacks.apgd`).

References:

* Goodfellow et al., "Explaining and Harnessing Adversarial Examples", arXiv 1412.6572.
* Kurakin et al., "Adversarial Examples in the Physical World", arXiv 1607.02533.
* Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", arXiv 1706.06083.
* Dong et al., "Boosting Adversarial Attacks with Momentum", arXiv 1710.06081.
* Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", arXiv 1608.04644.
* Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
  attacks", arXiv 2003.01690.
* Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via random search",
  arXiv 1912.00049.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medrobust.attacks.apgd import APGD, APGDCE, APGDDLR, APGDMargin
from medrobust.attacks.autoattack import AutoAttack
from medrobust.attacks.base import ATTACKS, Attack, IterativeAttack, eval_mode
from medrobust.attacks.bim import BIM
from medrobust.attacks.cw import CW
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.mifgsm import MIFGSM
from medrobust.attacks.pgd import PGD
from medrobust.attacks.pgdl2 import PGDL2
from medrobust.attacks.square import Square


def get_attack(name: str, model: nn.Module, **params: Any) -> Attack:
    """Instantiate a registered attack by name.

    Args:
        name: a key of :data:`ATTACKS`.
        model: the classifier to attack ([0, 1] images in, logits out).
        **params: the attack's keyword parameters (:func:`attack_params`).

    Returns:
        The attack; call it as ``attack(images, labels)``.

    Raises:
        KeyError: an unknown name, listing the registered ones.
        TypeError: a parameter the attack does not take, listing those it does.

    Example:
        >>> x_adv = get_attack("pgd", model, eps=8 / 255, steps=20)(x, y)
    """
    cls = ATTACKS[name]
    unknown = set(params) - set(attack_params(name))
    if unknown:
        raise TypeError(f"attack {name!r} takes no parameter {sorted(unknown)[0]!r}; "
                        f"allowed: {', '.join(attack_params(name))}")
    return cls(model, **params)


def attack_params(name: str) -> list[str]:
    """The keyword parameters of a registered attack (besides the model).

    Args:
        name: a key of :data:`ATTACKS`.

    Returns:
        The names of the attack constructor's parameters other than ``self`` and ``model``, in
        signature order.

    Raises:
        KeyError: an unknown name.

    Example:
        >>> attack_params("fgsm")
        ['eps', 'norm', 'targeted', 'seed']
    """
    sig = inspect.signature(ATTACKS[name].__init__)
    return [p for p in sig.parameters if p not in ("self", "model")]


__all__ = ["ATTACKS", "APGD", "Attack", "IterativeAttack", "attack_params", "eval_mode", "get_attack",
           "BIM", "CW", "FGSM", "MIFGSM", "PGD", "PGDL2", "APGDCE", "APGDDLR", "APGDMargin", "AutoAttack", "Square"]
