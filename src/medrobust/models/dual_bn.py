"""Dual batch normalisation (DSBN / AdvProp-style): one BN for clean data, one for adversarial data.

Every ``BatchNorm`` layer of a model becomes a :class:`DualBatchNorm` holding two copies. Which copy
a forward pass uses is chosen by an explicit flag, never inferred from the data::

    with bn_route(model, "adv"):
        logits_adv = model(x_adv)       # adversarial BN statistics and affine parameters

Outside the context every layer routes to the clean BN, so evaluation, attacks and deployment use
the clean branch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Route = Literal["clean", "adv"]


class DualBatchNorm(nn.Module):
    """Two batch-norm layers with the same shape; ``route`` picks the one used.

    Args:
        bn: the layer to duplicate; it becomes ``clean`` and a deep copy becomes ``adv``.

    Attributes:
        clean, adv: the two batch-norm layers.
        route: ``"clean"`` (the default) or ``"adv"``; set it with :func:`bn_route`.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.clean = bn
        self.adv = copy.deepcopy(bn)
        self.route: Route = "clean"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clean(x) if self.route == "clean" else self.adv(x)


def convert_dual_bn(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer under ``module`` by a :class:`DualBatchNorm` (in place).

    Layers that already are :class:`DualBatchNorm` are left as they are.

    Args:
        module: the model (``module`` itself is never replaced, only its descendants).

    Returns:
        ``module``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        elif not isinstance(child, DualBatchNorm):
            convert_dual_bn(child)
    return module


def has_dual_bn(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one :class:`DualBatchNorm`.

    Args:
        model: any module.
    """
    return bool(dual_bn_layers(model))


def dual_bn_layers(model: nn.Module) -> list[DualBatchNorm]:
    """Every :class:`DualBatchNorm` of ``model``, in module order.

    Args:
        model: any module.
    """
    return [m for m in model.modules() if isinstance(m, DualBatchNorm)]


@contextmanager
def bn_route(model: nn.Module, route: Route) -> Iterator[None]:
    """Route every :class:`DualBatchNorm` of ``model`` to ``route`` inside the block, then restore.

    Args:
        model: a model with dual batch norm (built with ``dual_bn=True``).
        route: ``"clean"`` or ``"adv"``.

    Yields:
        None; each layer's previous route is restored on exit, also after an exception.

    Raises:
        ValueError: ``route`` is neither ``"clean"`` nor ``"adv"``, or ``model`` has no dual batch-norm layers.

    Example:
        >>> with bn_route(model, "adv"):
        ...     logits_adv = model(x_adv)
    """
    if route not in ("clean", "adv"):
        raise ValueError(f"bn_route: route must be 'clean' or 'adv', got {route!r}")
    layers = dual_bn_layers(model)
    if not layers:
        raise ValueError("bn_route: the model has no dual batch-norm layers (build it with dual_bn=True)")
    saved = [m.route for m in layers]
    for m in layers:
        m.route = route
    try:
        yield
    finally:
        for m, r in zip(layers, saved):
            m.route = r
