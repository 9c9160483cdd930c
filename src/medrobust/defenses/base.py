"""The defence contract: a defence turns a clean batch into a training loss.

A training method only decides *what* to minimise for a batch; the loop in
:mod:`medrobust.training` owns data order, optimiser, checkpoints and logging. Adding a method is
one file with one :class:`Defense` subclass registered in :data:`medrobust.defenses.DEFENSES`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Defense:
    """Base class. ``loss`` returns the batch loss and a dict of float stats for logging."""

    name = "defense"

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.epoch = 0
        self.total_epochs = 1

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch, self.total_epochs = epoch, total_epochs

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError
