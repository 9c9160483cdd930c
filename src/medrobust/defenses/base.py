"""The defence contract: a defence turns a clean batch into a training loss.

A training method only decides *what* to minimise for a batch; the loop in
:mod:`medrobust.training` owns data order, optimiser, checkpoints and logging. Adding a method is
one file with one :class:`TrainingMethod` subclass registered in :data:`medrobust.defenses.TRAINING_METHODS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.utils.registry import Registry


#: name -> training method class; each class registers itself under its ``name``
#: (``@TRAINING_METHODS.register()``) and params.yaml chooses one with ``train.method``.
TRAINING_METHODS: Registry[type[TrainingMethod]] = Registry("training method")


class TrainingMethod:
    """Base class. ``loss`` returns the batch loss and a dict of float stats for logging."""

    name = "defense"
    #: ModelSpec fields this method needs (e.g. ``{"dual_bn": True}``); the train stage applies them.
    model_overrides: dict[str, Any] = {}
    #: True for methods that only make sense on images (augmentations, a texture module): they refuse
    #: vector data (the 2-D ``mlp`` backbone) with a clear error.
    image_only: bool = False
    #: which layers train (``medrobust.models.set_trainable``); None: ``train.model.trainable``.
    trainable: str | None = None

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.epoch = 0
        self.total_epochs = 1

    seed: int | None = None

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A generator seeded once from ``self.seed`` that advances from batch to batch (None: global RNG)."""
        if self.seed is None:
            return None
        gen = getattr(self, "_generator", None)
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            self._generator = gen
        return gen

    def attack_seed(self) -> int | None:
        """A fresh seed per batch for an attack object that takes ``seed`` (None without a seed)."""
        gen = self.generator(torch.device("cpu"))
        return None if gen is None else int(torch.randint(0, 2**62, (1,), generator=gen))

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, modality: str = "default") -> None:
        """Called once before training with the training images/labels and the data's DICOM modality
        (e.g. to pick a per-modality ε or initialise class centroids). The base class refuses vector
        data for ``image_only`` methods; subclasses that override this call ``super().prepare``."""
        if self.image_only and x.ndim != 4:
            raise ValueError(f"training method {self.name!r} needs images [N, C, H, W]; got data of shape "
                             f"{tuple(x.shape)} (vector data: use a method without image augmentations)")

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch, self.total_epochs = epoch, total_epochs

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError
