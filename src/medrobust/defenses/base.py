"""The defence contract: a defence turns a clean batch into a training loss.

A training method only decides *what* to minimise for a batch; the loop in
:mod:`medrobust.training` owns data order, optimiser, checkpoints and logging. Adding a method is
one file with one :class:`TrainingMethod` subclass registered in :data:`medrobust.defenses.TRAINING_METHODS`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.utils.registry import Registry


#: name -> training method class; each class registers itself under its ``name``
#: (``@TRAINING_METHODS.register()``) and params.yaml chooses one with ``train.method``.
TRAINING_METHODS: Registry[type[TrainingMethod]] = Registry("training method")


class TrainingMethod:
    """Base class. ``loss`` returns the batch loss and a dict of float stats for logging.

    A subclass sets ``name`` (its registry key and ``train.method`` value), registers itself with
    ``@TRAINING_METHODS.register()``, validates its hyper-parameters in ``__init__`` (raising
    ``ValueError``), passes them on to ``super().__init__`` and implements :meth:`loss`.

    Args:
        **params: the method's hyper-parameters, kept as ``self.params`` (not interpreted here).

    Example:
        >>> class CleanCE(TrainingMethod):  # add @TRAINING_METHODS.register() to make it selectable
        ...     name = "clean_ce"
        ...     def loss(self, model, x, y):
        ...         return torch.nn.functional.cross_entropy(model(x), y), {}
    """

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
        """A generator per device, seeded once from ``self.seed``, that advances from batch to batch (None: global RNG).

        Each device's generator is created on its first call; a method that draws on the batch's device
        (CUDA) and on the CPU (:meth:`attack_seed`) holds one of each, and neither is ever re-seeded.

        Args:
            device: the device the random numbers are drawn on (usually the batch's).

        Returns:
            A ``torch.Generator`` on ``device``, or None when ``self.seed`` is None.
        """
        if self.seed is None:
            return None
        generators: dict[str, torch.Generator] = self.__dict__.setdefault("_generators", {})
        key = str(torch.device(device))
        if key not in generators:
            generators[key] = torch.Generator(device=key).manual_seed(self.seed)
        return generators[key]

    def state_dict(self) -> dict[str, Any]:
        """The method's own state that a resumed run needs (the model and optimiser are saved apart).

        The base class holds the states of its :meth:`generator` s; methods that keep running statistics
        across batches (DPAAT's ΔL average) add them. Tensors, numbers and strings only (the resume
        state is read with ``torch.load(weights_only=True)``).

        Returns:
            ``{"generators": {device: state}}`` and whatever a subclass adds.
        """
        return {"generators": {k: g.get_state() for k, g in self.__dict__.get("_generators", {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned (an empty mapping: generators start from ``seed``).

        Args:
            state: a mapping from :meth:`state_dict`.
        """
        generators: dict[str, torch.Generator] = {}
        for key, value in state.get("generators", {}).items():
            generators[key] = torch.Generator(device=key)
            generators[key].set_state(value)
        self._generators = generators

    def attack_seed(self) -> int | None:
        """A fresh seed per batch for an attack object that takes ``seed`` (None without a seed).

        Returns:
            An integer in [0, 2**62) drawn from the CPU :meth:`generator` (advancing it), or None
            when ``self.seed`` is None.
        """
        gen = self.generator(torch.device("cpu"))
        return None if gen is None else int(torch.randint(0, 2**62, (1,), generator=gen))

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, modality: str = "default") -> None:
        """Called once before training with the training images/labels and the data's DICOM modality
        (e.g. to pick a per-modality ε or initialise class centroids). The base class refuses vector
        data for ``image_only`` methods; subclasses that override this call ``super().prepare``.

        Args:
            model: the classifier that will be trained.
            x: the whole training set, images ``[N, C, H, W]`` in [0, 1] (or vectors ``[N, D]``).
            y: class indices ``[N]``.
            modality: the data's DICOM Modality (e.g. ``"MG"``, ``"DX"``); ``"default"`` when unknown.

        Raises:
            ValueError: ``image_only`` is set and ``x`` is not 4-D.
        """
        if self.image_only and x.ndim != 4:
            raise ValueError(f"training method {self.name!r} needs images [N, C, H, W]; got data of shape "
                             f"{tuple(x.shape)} (vector data: use a method without image augmentations)")

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        """Record the epoch about to start (for schedules such as an ε warm-up).

        Args:
            epoch: 0-based index of the epoch, counted from the first epoch that uses this method
                (the training loop's clean warm-up epochs are not counted).
            total_epochs: number of epochs this method trains for.
        """
        self.epoch, self.total_epochs = epoch, total_epochs

    def warmup_loss(self, model: nn.Module, x: torch.Tensor,
                    y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the training loop's clean warm-up epochs (``train.clean_warmup_epochs``).

        The warm-up exists because adversarial objectives at full ε can stall a network trained from
        scratch at the constant predictor. The base class minimises clean cross-entropy; a method
        whose own machinery must hold from the first step (a texture constraint, feature
        regularisers) overrides this.

        Args:
            model: the classifier, in training mode.
            x: a batch of images ``[B, C, H, W]`` in [0, 1] (or vectors ``[B, D]``).
            y: class indices ``[B]``.

        Returns:
            ``(loss, stats)`` as :meth:`loss` returns them; the base class gives ``CE(f(x), y)`` and ``train_acc``.
        """
        logits = model(x)
        return F.cross_entropy(logits, y), {"train_acc": (logits.argmax(1) == y).float().mean().item()}

    def end_warmup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called once when the clean warm-up ends, before the first batch of :meth:`loss`.

        Not called without a warm-up, nor by a run resumed after it (the model it set up is in the
        saved state). Methods whose set-up depends on the trained network (class centroids, the
        statistics of a second batch norm) redo it here. The base class does nothing.

        Args:
            model: the classifier after the warm-up (its mode is restored by the caller).
            x: the whole training set, images ``[N, C, H, W]`` in [0, 1], possibly on the CPU: move
                chunks to the model's device.
            y: class indices ``[N]``.
        """

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch; the training loop calls ``backward()`` on it.

        Args:
            model: the classifier, in the caller's mode (training mode in the loop).
            x: a batch of images ``[B, C, H, W]`` in [0, 1] (or vectors ``[B, D]``).
            y: class indices ``[B]``.

        Returns:
            ``(loss, stats)``: a scalar tensor with a graph to the trainable parameters, and float
            statistics for logging (e.g. ``train_acc``, ``train_adv_acc``), averaged by the loop.

        Raises:
            NotImplementedError: always, in the base class.
        """
        raise NotImplementedError
