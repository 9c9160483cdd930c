"""Training methods — the five papers' defences and their baselines — behind the :data:`TRAINING_METHODS`
registry, chosen by name in params.yaml (``train.method``).

One file per method, each a :class:`TrainingMethod` subclass that registers itself under its
``name`` and only returns a loss; the shared loop (:func:`medrobust.training.train_model`) owns
data order, optimiser, checkpoints and logging. Each module's docstring gives the paper (title and
arXiv id), the equations, the defaults and every choice made where the paper is silent.
"""

from __future__ import annotations

import inspect
from typing import Any

from medrobust.defenses import (  # noqa: F401 - imported to register them
    arfl, augmix, domain_assimilation, dpaat, dsbn, dual_at, fast_at, gaussian_noise, mart, pgd_at, probes, ran,
    rtda, smooth_adv, standard, trades)
from medrobust.defenses.base import TRAINING_METHODS, TrainingMethod


def get_method(name: str, seed: int | None = None, **params: Any) -> TrainingMethod:
    """Instantiate a registered training method.

    Args:
        name: a key of :data:`TRAINING_METHODS`.
        seed: goes to methods that draw random numbers themselves (ignored by the others).
        **params: the method's hyper-parameters (``train.methods.<name>`` in params.yaml).

    Returns:
        The method, ready for :func:`medrobust.training.train_model`.

    Raises:
        KeyError: an unknown name, listing the registered ones.
        TypeError, ValueError: a parameter the method does not take, or a value it refuses.
    """
    cls = TRAINING_METHODS[name]
    if seed is not None and "seed" in inspect.signature(cls.__init__).parameters:
        params["seed"] = seed
    return cls(**params)


__all__ = ["TRAINING_METHODS", "TrainingMethod", "get_method"]
