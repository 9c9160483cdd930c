"""Backbone definitions, each split into the parts every training method can rely on.

A builder returns a :class:`Trunk`: ``features`` (input → the last convolutional feature map
``[N, C, H, W]``, or a feature vector for the MLP), ``pool`` (feature map → vector), ``head``
(vector → logits), ``feature_dim`` (the pooled width), and ``last_block`` (the module names, in the
classifier, that make up its last block: what ARFL fine-tunes together with the head).

torchvision backbones (ResNet18/50, DenseNet121, VGG16) are built without downloading anything;
ImageNet weights come from a local file (a torchvision ``state_dict``) through ``pretrained`` (:mod:`.weights`).
With 1-channel input the first convolution's RGB kernels are summed, so a grey image gives the
same activations as that grey image repeated on three channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medrobust.models.registry import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from medrobust.models.weights import adapt_first_conv, load_torchvision_state

#: the registry config of the torchvision backbones: ImageNet normalisation for their local weights
IMAGENET = {"pretrained_mean": IMAGENET_MEAN, "pretrained_std": IMAGENET_STD}


class Normalize(nn.Module):
    """``(x - mean) / std`` with mean/std as buffers: the model's first layer, so attacks see [0, 1].

    ``mean``/``std`` are scalars or one value per channel; they broadcast over ``[N, C, H, W]``
    images and over ``[N, D]`` vectors alike.

    Args:
        mean: the value subtracted, a scalar or one per channel.
        std: the divisor, a scalar or one per channel.
        channels: the input's channels ``C`` (a scalar is repeated to this length).
    """

    def __init__(self, mean: float | list[float] | tuple[float, ...], std: float | list[float] | tuple[float, ...],
                 channels: int = 1) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(channels).reshape(1, channels)
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(channels).reshape(1, channels)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


@dataclass
class Trunk:
    """What a backbone builder returns: the parts a :class:`~medrobust.models.Classifier` is made of.

    Attributes:
        features: input → the last convolutional feature map ``[N, C, H, W]`` (a vector for the MLP).
        pool: feature map → the pooled vector ``[N, feature_dim]``.
        head: pooled vector → logits ``[N, num_classes]``.
        feature_dim: the pooled width.
        last_block: module names in the classifier (``features.…``, ``pool``) that form the last block.
    """

    features: nn.Module
    pool: nn.Module
    head: nn.Module
    feature_dim: int
    last_block: list[str] = field(default_factory=list)  # module names in the Classifier (features.…, pool)


def _gap() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


@BACKBONES.register("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, width: int = 16) -> Trunk:
    """Four conv blocks (conv-BN-ReLU, stride-2 downsampling) + global average pooling + linear.

    The blocks have ``width``, 2×, 4× and 8× ``width`` channels; the first keeps the resolution, the
    other three halve it. ``last_block`` is the fourth block.

    Args:
        num_classes: outputs of the linear head.
        in_channels: the image's channels.
        width: the first block's channels (the pooled feature has ``8 * width``).

    Returns:
        The trunk.
    """

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    w = width
    features = nn.Sequential(block(in_channels, w, 1), block(w, 2 * w, 2), block(2 * w, 4 * w, 2),
                             block(4 * w, 8 * w, 2))
    return Trunk(features, _gap(), nn.Linear(8 * w, num_classes), 8 * w, last_block=["features.3"])


@BACKBONES.register("mlp", in_channels=2)
def mlp(num_classes: int, in_channels: int = 2, width: int = 10) -> Trunk:
    """A multi-layer perceptron for vector data (the ARFL two-moon net is ``in 2, width 10``:
    2-10-10-1 with the ``binary`` head). The "feature map" is the penultimate layer's activations.

    Args:
        num_classes: outputs of the linear head.
        in_channels: the input vector's length.
        width: the width of both hidden layers (ReLU after each).

    Returns:
        The trunk (``pool`` is the identity; ``last_block`` is the second hidden layer).
    """
    features = nn.Sequential(nn.Linear(in_channels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
    return Trunk(features, nn.Identity(), nn.Linear(width, num_classes), width, last_block=["features.2"])


def _resnet(name: str) -> Callable[..., Trunk]:
    def build(num_classes: int, in_channels: int = 1, width: int = 64, pretrained: str | Path | None = None) -> Trunk:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=None)
        load_torchvision_state(net, pretrained)
        net.conv1 = adapt_first_conv(net.conv1, in_channels)
        features = nn.Sequential()
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            features.add_module(part, getattr(net, part))
        dim = net.fc.in_features
        return Trunk(features, _gap(), nn.Linear(dim, num_classes), dim, last_block=["features.layer4"])

    build.__doc__ = f"torchvision {name} (``width`` ignored); ``features`` ends at layer4."
    return build


@BACKBONES.register("densenet121", **IMAGENET)
def densenet121(num_classes: int, in_channels: int = 1, width: int = 64,
                pretrained: str | Path | None = None) -> Trunk:
    """torchvision DenseNet121; ``features`` ends with the final norm + ReLU (as torchvision's forward).

    Args:
        num_classes: outputs of the new linear head.
        in_channels: the image's channels (1: the first convolution's RGB kernels are summed).
        width: ignored.
        pretrained: a local torchvision ImageNet ``state_dict`` file; None: random initialisation.

    Returns:
        The trunk (1024-d pooled feature; ``last_block``: denseblock4 and norm5).

    Raises:
        FileNotFoundError: ``pretrained`` is not a file.
        ValueError: the weights' keys do not fit DenseNet121.
    """
    import torchvision.models as tvm

    net = tvm.densenet121(weights=None)
    load_torchvision_state(net, pretrained)
    net.features.conv0 = adapt_first_conv(net.features.conv0, in_channels)
    features = nn.Sequential(net.features, nn.ReLU(inplace=False))
    dim = net.classifier.in_features
    return Trunk(features, _gap(), nn.Linear(dim, num_classes), dim,
                 last_block=["features.0.denseblock4", "features.0.norm5"])


@BACKBONES.register("vgg16", **IMAGENET)
def vgg16(num_classes: int, in_channels: int = 1, width: int = 64, pretrained: str | Path | None = None) -> Trunk:
    """torchvision VGG16: ``features`` = the conv stack; ``pool`` = avgpool + fc6 + fc7 (ImageNet weights
    kept), so the pooled feature is the 4096-d fc7 output, the usual frozen VGG feature; the head is a
    new fc8 for ``num_classes``. ``last_block`` = the last conv layer + fc6/fc7 (what ARFL fine-tunes
    together with the head).

    Args:
        num_classes: outputs of the new fc8 head.
        in_channels: the image's channels (1: the first convolution's RGB kernels are summed).
        width: ignored.
        pretrained: a local torchvision ImageNet ``state_dict`` file; None: random initialisation.

    Returns:
        The trunk.

    Raises:
        FileNotFoundError: ``pretrained`` is not a file.
        ValueError: the weights' keys do not fit VGG16.
    """
    import torchvision.models as tvm

    net = tvm.vgg16(weights=None)
    load_torchvision_state(net, pretrained)
    net.features[0] = adapt_first_conv(net.features[0], in_channels)
    fc = net.classifier  # fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8
    pool = nn.Sequential(net.avgpool, nn.Flatten(), *list(fc.children())[:6])
    return Trunk(net.features, pool, nn.Linear(fc[6].in_features, num_classes), fc[6].in_features,
                 last_block=["features.28", "features.29", "features.30", "pool"])


resnet18 = BACKBONES.register("resnet18", **IMAGENET)(_resnet("resnet18"))
resnet50 = BACKBONES.register("resnet50", **IMAGENET)(_resnet("resnet50"))

__all__ = ["IMAGENET", "Normalize", "Trunk", "densenet121", "mlp", "resnet18", "resnet50", "small_cnn", "vgg16"]
