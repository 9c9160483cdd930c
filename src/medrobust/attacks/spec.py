"""One attack of a suite as params.yaml writes it (``evaluate.attacks``, ``advgen.attacks``).

The threat model (``norm``) always travels with the epsilons. ``name`` is any key of
:data:`~medrobust.attacks.ATTACKS`; options left out (null) take the attack's own documented
default, and an option the attack does not take is an error naming what it does take.

Fields of :class:`AttackSpec` (documented here: its class docstring is the JSON Schema's description):

* ``name`` — a registered attack; ``norm`` — ``"linf"`` (default) or ``"l2"``, which the attack must support;
* ``eps`` — one or more budgets, numbers or fractions such as ``"8/255"`` (default ``[8/255]``);
* ``steps`` (0 .. 100,000; for ``bim`` 0 selects Kurakin's rule), ``step_size``, ``random_start``;
* ``n_restarts`` (1 .. 1000: APGD, AutoAttack, Square) and ``n_queries`` (1 .. 1,000,000: Square, AutoAttack).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator
from torch import nn

from medrobust.attacks import ATTACKS, Attack, attack_params, get_attack
from medrobust.config import MAX_EPS, Eps, EpsTuple, InRegistry, Norm, StrictModel, eps_label, field_error

#: The options an :class:`AttackSpec` may set, besides the budget.
OPTIONS = ("steps", "step_size", "random_start", "n_restarts", "n_queries")


class AttackSpec(StrictModel):
    """``{name, norm, eps: [...], steps, step_size, random_start, n_restarts, n_queries}``.

    Example:
        >>> AttackSpec(name="pgd", eps=(8 / 255,), steps=20).key
        'pgd_linf'
    """

    name: Annotated[str, InRegistry(ATTACKS)]
    norm: Norm = "linf"
    eps: EpsTuple = (8 / 255,)
    steps: int | None = Field(None, ge=0, le=100_000)
    step_size: Eps | None = None
    random_start: bool | None = None
    n_restarts: int | None = Field(None, ge=1, le=1000)
    n_queries: int | None = Field(None, ge=1, le=1_000_000)

    @property
    def key(self) -> str:
        """``<name>_<norm>``: how metrics.json and the gates name this attack."""
        return f"{self.name}_{self.norm}"

    @model_validator(mode="after")
    def _fits_the_attack(self) -> AttackSpec:
        norms = ATTACKS[self.name].norms
        if self.norm not in norms:
            raise field_error("norm", f"{self.name} does not support {self.norm!r}; allowed values: {', '.join(norms)}")
        if too_big := [e for e in self.eps if e > MAX_EPS[self.norm]]:
            raise field_error("eps", f"{eps_label(too_big[0])} is more than a {self.norm} budget can be in [0, 1] pixel "
                                     f"space (at most {MAX_EPS[self.norm]:g}); write 8/255, not 8")
        allowed = set(attack_params(self.name))
        for opt in OPTIONS:
            if getattr(self, opt) is not None and opt not in allowed:
                takes = sorted(allowed - {"norm", "eps", "targeted", "seed"})
                raise field_error(opt, f"{self.name} takes no {opt!r}; it takes: {', '.join(takes) or 'nothing'}")
        return self


def from_spec(spec: AttackSpec, model: nn.Module, eps: float, seed: int | None = None) -> Attack:
    """Build the attack ``spec`` describes at one of its epsilons.

    Args:
        spec: the suite entry.
        model: the classifier to attack.
        eps: one of ``spec.eps``.
        seed: passed to attacks whose constructor takes a ``seed``.

    Returns:
        The attack, with every option the spec sets and the attack's defaults for the rest.

    Raises:
        ValueError: the attack's constructor rejects a value (e.g. ``random_start=True`` for ``bim``
            or ``mifgsm``).

    Example:
        >>> attack = from_spec(AttackSpec(name="pgd", eps=(4 / 255, 8 / 255)), model, 8 / 255, seed=0)
    """
    allowed = set(attack_params(spec.name))
    kwargs: dict[str, Any] = {"eps": eps, "norm": spec.norm}
    if "seed" in allowed:
        kwargs["seed"] = seed
    for key in OPTIONS:
        value = getattr(spec, key)
        if value is not None and key in allowed:
            kwargs[key] = value
    return get_attack(spec.name, model, **kwargs)


__all__ = ["OPTIONS", "AttackSpec", "from_spec"]
