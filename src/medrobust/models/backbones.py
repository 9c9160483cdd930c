"""Backbone definitions: a small CNN (fast on CPU, the default) and ResNet18 with 1-channel input."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` with mean/std as buffers: the model's first layer, so attacks see [0, 1]."""

    def __init__(self, mean: float | list[float], std: float | list[float], channels: int = 1) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_cnn(num_classes: int, in_channels: int = 1, width: int = 16) -> nn.Module:
    """Four conv blocks (conv-BN-ReLU, stride-2 downsampling) + global average pooling + linear."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(in_channels, w, 1),
        *block(w, 2 * w, 2),
        *block(2 * w, 4 * w, 2),
        *block(4 * w, 8 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, num_classes),
    )


def resnet18(num_classes: int, in_channels: int = 1, width: int = 64) -> nn.Module:
    """torchvision ResNet18 whose first convolution takes ``in_channels`` channels.

    ``width`` is accepted for a uniform signature; ResNet18 keeps its standard widths.
    """
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
