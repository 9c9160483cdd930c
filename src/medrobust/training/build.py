"""Models and training methods from params: the one place advgen and train (and the benchmarks) build them."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from medrobust.data.shards import ArraySplit
from medrobust.defenses import TrainingMethod, get_method
from medrobust.models import Classifier, ModelSpec, backbone_cfg, build_model, load_model, set_trainable
from medrobust.training.config import ModelConfig, SurrogateConfig, TrainConfig
from medrobust.training.loop import train_model

log = logging.getLogger(__name__)


def model_spec(cfg: ModelConfig, num_classes: int, image_size: int, in_channels: int = 1,
               method: TrainingMethod | None = None) -> ModelSpec:
    """The :class:`~medrobust.models.ModelSpec` a ``model:`` section describes.

    The normalisation comes from the backbone's registry entry (ImageNet's when local ImageNet
    weights are loaded, identity for CLIP); ``method``'s ``model_overrides`` (dual BN, a RAN head,
    the assimilation adapter) are applied last.

    Args:
        cfg: ``train.model`` or ``advgen.surrogate.model``.
        num_classes: ``len(data.classes)``.
        image_size: ``data.image_size``.
        in_channels: the data's channels.
        method: the training method, whose model requirements win.

    Returns:
        The spec.

    Raises:
        KeyError: an unknown backbone.
    """
    spec = ModelSpec(backbone=cfg.backbone, num_classes=num_classes, in_channels=in_channels, width=cfg.width,
                     image_size=image_size, head=cfg.head, head_hidden=cfg.head_hidden,
                     **backbone_cfg(cfg.backbone).normalization(in_channels, pretrained=bool(cfg.pretrained)))
    if method is not None and method.model_overrides:
        log.info("method %s sets the model's %s", method.name, method.model_overrides)
        spec = dataclasses.replace(spec, **method.model_overrides)
    return spec


def build_method(cfg: TrainConfig, method: str, train: ArraySplit, num_classes: int, image_size: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[Classifier, TrainingMethod, ModelSpec]:
    """The model and the training method ``method`` as ``train:`` configures them, ready to train.

    Applies the method's model requirements (e.g. dual BN, a RAN head), loads local pretrained
    weights, freezes what ``trainable`` says, and calls the method's ``prepare`` hook with the
    training data and its DICOM modality.

    Args:
        cfg: the ``train`` section.
        method: a :data:`~medrobust.defenses.TRAINING_METHODS` name (its settings: ``cfg.methods``).
        train: the training split.
        num_classes: ``len(data.classes)``.
        image_size: ``data.image_size``.
        seed: params.yaml's ``seed`` (methods that draw random numbers get it).
        device: where the model goes.

    Returns:
        (model, method, spec).

    Raises:
        KeyError: an unknown method or backbone.
        ValueError: the method refuses the model or the data (e.g. dsbn without batch norm), or the
            pretrained weights do not fit.
        FileNotFoundError: ``train.model.pretrained`` is not a file.
    """
    trainer = get_method(method, seed=seed, **cfg.settings(method))
    spec = model_spec(cfg.model, num_classes, image_size, in_channels=int(train.x.shape[1]), method=trainer)
    model = build_model(spec, pretrained=cfg.model.pretrained or None)
    trainable = trainer.trainable or cfg.model.trainable
    n_train = len(set_trainable(model, trainable))
    log.info("%s/%s: %d of %d parameter tensors train (%s)", method, spec.backbone, n_train,
             len(list(model.parameters())), trainable)
    model = model.to(device)
    modality = str(train.manifest["modality"].mode().iloc[0]) if "modality" in train.manifest else "default"
    trainer.prepare(model, train.x.to(device), train.y.to(device), modality=modality)
    return model, trainer, spec


def build_surrogate(cfg: SurrogateConfig, train: ArraySplit, val: ArraySplit, num_classes: int, image_size: int,
                    seed: int, device: torch.device | str = "cpu") -> tuple[Classifier, ModelSpec]:
    """advgen's surrogate: loaded from ``cfg.weights``, or trained with standard training.

    A loaded surrogate keeps the spec saved beside its weights (``<stem>.json``), not ``cfg.model``'s.

    Args:
        cfg: ``advgen.surrogate``.
        train, val: the clean splits (``val`` gives the per-epoch validation accuracy).
        num_classes: ``len(data.classes)``.
        image_size: ``data.image_size``.
        seed: the surrogate's seed (data order).
        device: where the model goes.

    Returns:
        (model on ``device``, spec).

    Raises:
        FileNotFoundError: ``cfg.weights`` (or the spec beside it) or ``cfg.model.pretrained`` is missing.
        KeyError: an unknown backbone or head.
    """
    spec = model_spec(cfg.model, num_classes, image_size)
    if cfg.weights:
        model, spec = load_model(Path(cfg.weights).parent, Path(cfg.weights).stem)
        log.info("surrogate loaded from %s", cfg.weights)
    else:
        model = build_model(spec, pretrained=cfg.model.pretrained or None).to(device)
        set_trainable(model, cfg.model.trainable)
        train_model(model, get_method("standard"), train, val, epochs=cfg.epochs, batch_size=cfg.batch_size,
                    optim=cfg.optim, seed=seed, desc="surrogate")
    return model.to(device), spec


__all__ = ["build_method", "build_surrogate", "model_spec"]
