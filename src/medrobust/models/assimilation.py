"""The texture–colour adapter of domain assimilation (Chen & Luo, "Adversarial-Robust Transfer
Learning for Medical Imaging via Domain Assimilation", arXiv 2402.16005, PAKDD 2024).

The paper puts two learned modules in front of an ImageNet-pretrained backbone, trained jointly
with it: a *texture module* that adapts the grey medical image's texture and a *colour module*
that turns it into an RGB image, so that the backbone sees something closer to its natural-image
domain (the GLCM loss, :mod:`medrobust.defenses.glcm`, keeps the texture from drifting). The text
available to us (the abstract and a summary) does not give the modules' layers, so these are our
choices, each with its reason:

* :class:`TextureModule` — ``t = x + conv3(ReLU(conv2(ReLU(conv1(x)))))``: three 3×3 convolutions
  (``hidden`` channels, reflect padding so borders are not darkened) on a residual path. The last
  convolution starts at a small scale (weights × ``init_scale``, zero bias), so the module starts
  close to the identity — training begins from the plain grey image a pretrained backbone is
  normally fine-tuned on — while every layer still receives gradients from the first step.
  3×3 kernels are local, which is what "texture" (second-order, neighbouring-pixel statistics,
  the GLCM's d = 3) means here.
* :class:`ColourModule` — ``rgb = sigmoid(skip(t) + mlp(t))``: a per-pixel linear map ``C → 3``
  plus a per-pixel MLP (1×1 convolutions ``C → hidden → 3``, ReLU), squashed by a sigmoid so the
  RGB image stays in [0, 1], the range the classifier's ImageNet normalisation expects (no clamp:
  a clamp would cut the input gradient at black/white pixels, a gradient-masking artefact under
  attack). It is a learned colour map (a smooth lookup table from grey level to RGB); per-pixel so
  that colour encodes intensity and the spatial structure stays the texture module's job. The
  skip starts at ``4·t − 2`` on every channel (``sigmoid(4t − 2)``: an S-curve through
  (0.5, 0.5) with slope 1 there, mapping [0, 1] onto [0.12, 0.88]) and the MLP's output layer at
  a tenth of its default scale, so training starts from a near-grey image with a slight random
  tint — close to the standard "grey repeated on 3 channels" fine-tuning — and the GLCM loss is
  small but non-zero, with a gradient, from the first step.

The adapter is registered as ``ADAPTERS["assimilation"]`` (:mod:`medrobust.models`); the
classifier then normalises its 3-channel output with the ImageNet mean/std. It works for any
number of input channels (``in_channels``), the paper's case being 1.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.models.registry import ADAPTERS


class TextureModule(nn.Module):
    """``x + conv3(ReLU(conv2(ReLU(conv1(x)))))`` with 3×3 kernels; starts near the identity.

    Args:
        channels: the image's channels ``C`` (input and output).
        hidden: the channels of the two inner convolutions.
        init_scale: factor on the last convolution's initial weights (its bias starts at zero).
    """

    def __init__(self, channels: int = 1, hidden: int = 16, init_scale: float = 0.01) -> None:
        super().__init__()
        kw = dict(kernel_size=3, padding=1, padding_mode="reflect")
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, **kw), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, **kw), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, **kw),
        )
        last = self.body[-1]
        with torch.no_grad():
            last.weight.mul_(init_scale)
            last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ColourModule(nn.Module):
    """``sigmoid(skip(x) + mlp(x))`` with per-pixel (1×1) layers ``C → 3`` and ``C → hidden → 3``:
    RGB in [0, 1]; starts near ``sigmoid(4·grey − 2)`` on every channel.

    Args:
        channels: the input channels ``C``.
        hidden: the MLP's hidden width.
        init_gain: the skip's initial slope on the channel mean (its bias starts at ``-init_gain / 2``).
        mlp_scale: factor on the MLP output layer's initial weights and bias.
    """

    def __init__(self, channels: int = 1, hidden: int = 16, init_gain: float = 4.0, mlp_scale: float = 0.1) -> None:
        super().__init__()
        self.skip = nn.Conv2d(channels, 3, 1)
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 3, 1))
        with torch.no_grad():
            self.skip.weight.fill_(init_gain / channels)  # the channel mean, times the gain
            self.skip.bias.fill_(-init_gain / 2)
            self.body[-1].weight.mul_(mlp_scale)
            self.body[-1].bias.mul_(mlp_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.skip(x) + self.body(x))


class AssimilationAdapter(nn.Module):
    """``colour(texture(x))``: a ``C``-channel image in [0, 1] → a 3-channel RGB image in [0, 1].

    Args:
        in_channels: the image's channels ``C``.
        hidden: the hidden width of both modules.

    Attributes:
        out_channels: 3, the channels the backbone receives.
    """

    out_channels = 3

    def __init__(self, in_channels: int = 1, hidden: int = 16) -> None:
        super().__init__()
        self.texture = TextureModule(in_channels, hidden)
        self.colour = ColourModule(in_channels, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.colour(self.texture(x))


@ADAPTERS.register("assimilation")
def build_assimilation_adapter(in_channels: int) -> tuple[nn.Module, int]:
    """The ``assimilation`` adapter (texture → colour modules, domain assimilation): ``(adapter, 3)``.

    Args:
        in_channels: the data's channels.

    Returns:
        (the :class:`AssimilationAdapter`, its output channels: 3).
    """
    return AssimilationAdapter(in_channels), AssimilationAdapter.out_channels
