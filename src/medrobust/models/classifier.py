"""One :class:`Classifier` shape every training method relies on, and :func:`build_model` from a spec.

A classifier is ``adapter → normalize → features → pool → head``:

* ``adapter``: identity, or a learned module that maps 1-channel images to 3 channels (domain
  assimilation, :data:`~medrobust.models.registry.ADAPTERS`);
* ``normalize``: ``(x − mean) / std`` as buffers, so attacks work in [0, 1] pixel space;
* ``features`` / ``pool`` / ``head`` come from the backbone
  (:data:`~medrobust.models.registry.BACKBONES`); ``head`` may be replaced
  (:data:`~medrobust.models.registry.HEADS`: ``linear``, ``binary`` — one logit, ``mlp``, ...).

A model is described by a small JSON-able :class:`ModelSpec`; :mod:`medrobust.models.io` saves it
beside the ``state_dict``, so loading never unpickles code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medrobust.models.backbones import Normalize
from medrobust.models.dual_bn import convert_dual_bn, has_dual_bn
from medrobust.models.registry import ADAPTERS, BACKBONES, HEADS, backbone_cfg
from medrobust.models.weights import load_encoder, read_medrobust_state

#: set on a batch-norm layer whose parameters are all frozen: it stays in eval mode while the model trains
FROZEN_BN = "medrobust_frozen"


class Classifier(nn.Module):
    """``head(pool(features(normalize(adapter(x)))))`` with each part reachable by name.

    Args:
        normalize: the first layer after the adapter (:class:`~medrobust.models.Normalize`).
        features: input → the last feature map (the trunk's ``features``).
        pool: feature map → vector.
        head: vector → logits.
        adapter: a module run before ``normalize``; None: the identity.
        last_block: the module names of the backbone's last block (for ``set_trainable(model, "last_block")``).

    Example:
        >>> model = build_model(ModelSpec("small_cnn", num_classes=2))
        >>> logits = model(x)                         # x in [0, 1]; normalisation is inside the model
        >>> fmap = model.forward_features(x)          # the last conv feature map (ARFL's L_robust)
        >>> emb = model.embed(x)                      # the pooled feature vector (RAN's frozen features)
    """

    def __init__(self, normalize: nn.Module, features: nn.Module, pool: nn.Module, head: nn.Module,
                 adapter: nn.Module | None = None, last_block: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.adapter = adapter if adapter is not None else nn.Identity()
        self.normalize = normalize
        self.features = features
        self.pool = pool
        self.head = head
        self.last_block = tuple(last_block)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map ``[N, C, H, W]`` (the penultimate activations for an MLP).

        Args:
            x: images in [0, 1] (or vectors, for the MLP), ``[N, C, H, W]``.

        Returns:
            ``features(normalize(adapter(x)))``.
        """
        return self.features(self.normalize(self.adapter(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector the head sees.

        Args:
            x: images in [0, 1], ``[N, C, H, W]``.

        Returns:
            ``[N, D]``, ``D`` the backbone's feature width.
        """
        return self.pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def train(self, mode: bool = True) -> Classifier:
        """As ``nn.Module.train``, but frozen batch-norm layers stay in eval mode (their statistics
        belong to the frozen backbone, see :func:`medrobust.models.set_trainable`).

        Args:
            mode: True for training mode, False for eval mode.

        Returns:
            The model itself.
        """
        super().train(mode)
        if mode:
            for m in self.modules():
                if getattr(m, FROZEN_BN, False):
                    m.eval()
        return self


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier (saved as ``model.json`` beside ``model.pt``).

    Attributes:
        backbone: a :data:`~medrobust.models.BACKBONES` name.
        num_classes: the number of classes (logits).
        in_channels: the input's channels.
        width: the backbone's width (small CNN, MLP; ignored by the others).
        image_size: the input's side length in pixels (recorded; the model does not check it).
        mean, std: the normalisation, scalars or one value per channel.
        head: ``default`` (the backbone's own) or a :data:`~medrobust.models.HEADS` name.
        head_hidden: the hidden width of the ``mlp`` / ``ran`` heads (0: the feature width).
        adapter: an :data:`~medrobust.models.ADAPTERS` name (``none``: the identity).
        dual_bn: every batch-norm layer becomes a :class:`~medrobust.models.DualBatchNorm`.
    """

    backbone: str
    num_classes: int
    in_channels: int = 1
    width: int = 16
    image_size: int = 64
    mean: float | tuple[float, ...] = 0.5
    std: float | tuple[float, ...] = 0.25
    head: str = "default"
    head_hidden: int = 0  # width of the mlp head's hidden layer (0: the feature width)
    adapter: str = "none"
    dual_bn: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """The spec from its JSON form (lists become tuples).

        Args:
            d: the mapping ``model.json`` holds (the dataclass fields).

        Returns:
            The spec.

        Raises:
            TypeError: a key that is not a field, or a missing ``backbone`` / ``num_classes``.
        """
        d = dict(d)
        for k in ("mean", "std"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


@ADAPTERS.register("none")
def no_adapter(in_channels: int) -> tuple[nn.Module, int]:
    """The identity adapter.

    Args:
        in_channels: the data's channels.

    Returns:
        (``nn.Identity()``, ``in_channels``).
    """
    return nn.Identity(), in_channels


def build_model(spec: ModelSpec, pretrained: str | Path | None = None) -> Classifier:
    """Build the classifier ``spec`` describes.

    Args:
        spec: the backbone, head, adapter, normalisation and sizes.
        pretrained: a local weights file — a torchvision ImageNet ``state_dict`` or CLIP weights for
            the backbones that have them, or a medrobust ``model.pt`` (its encoder is loaded, the
            head stays new). Nothing is downloaded.

    Returns:
        The classifier, in training mode.

    Raises:
        KeyError: an unknown backbone, head or adapter (listing the registered ones).
        ValueError: weights that do not fit, ImageNet weights for a backbone without any, or
            ``dual_bn`` for a backbone without batch norm.
        FileNotFoundError: ``pretrained`` is not a file.
    """
    builder, make_adapter = BACKBONES[spec.backbone], ADAPTERS[spec.adapter]
    if spec.head != "default" and spec.head not in HEADS:
        raise KeyError(f"unknown head {spec.head!r}; available: default, {', '.join(sorted(HEADS))}")
    encoder_state = read_medrobust_state(pretrained) if pretrained else None
    if encoder_state is not None:
        pretrained = None  # a medrobust model: its encoder is loaded below
    if pretrained and not backbone_cfg(spec.backbone).has_weights:
        raise ValueError(f"{spec.backbone} has no ImageNet weights; give a medrobust model.pt as pretrained "
                         "(its encoder is loaded) or leave model.pretrained empty")
    adapter, channels = make_adapter(spec.in_channels)
    kwargs = {"pretrained": pretrained} if pretrained else {}
    trunk = builder(num_classes=spec.num_classes, in_channels=channels, width=spec.width, **kwargs)
    head = trunk.head if spec.head == "default" else HEADS[spec.head](trunk.feature_dim, spec.num_classes,
                                                                       spec.head_hidden)
    model = Classifier(Normalize(spec.mean, spec.std, channels), trunk.features, trunk.pool, head,
                       adapter=adapter, last_block=tuple(trunk.last_block))
    if encoder_state is not None:
        load_encoder(model, encoder_state)
    if spec.dual_bn:
        convert_dual_bn(model)
        if not has_dual_bn(model):
            raise ValueError(f"dual_bn: backbone {spec.backbone!r} has no batch-norm layers to duplicate "
                             "(dual batch norm / dsbn needs a backbone with batch norm, e.g. small_cnn, resnet18)")
    return model


__all__ = ["FROZEN_BN", "Classifier", "ModelSpec", "build_model"]
