"""A tiny CLIP for pretraining on this machine: open_clip's ``CLIP`` with medrobust's ``clip_vit_tiny`` tower.

:func:`build_clip` makes an open_clip ``CLIP`` (OpenAI layout, QuickGELU) from :class:`ClipConfig`,
randomly initialised and seeded. The image tower is fixed to
:data:`medrobust.models.clip.CLIP_VIT_TINY` (ViT width 64, 2 layers, patch 8, 32×32 input,
embedding 64), so the state dict :meth:`ImageTextModel.clip_state_dict` returns loads into a
classifier with ``ModelSpec("clip_vit_tiny", ..., pretrained=...)`` and the light-weight heads train on
the features it learned. The text tower is small (width 64, 2 layers, 24 tokens) and uses
open_clip's own BPE tokenizer, whose vocabulary ships inside the package (nothing is downloaded).

Images go in as [0, 1] tensors ``[N, 1, H, W]``: the tower's own preprocessing
(:class:`~medrobust.models.clip.ClipImageEncoder`: grey → RGB, bicubic resize to 32, CLIP mean/std)
is part of the model, so image attacks work in pixel space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.models.clip import CLIP_TINY_EMBED, CLIP_VIT_TINY, ClipImageEncoder


@dataclass(frozen=True)
class ClipConfig:
    """The text tower of the tiny CLIP (the image tower is ``clip_vit_tiny``).

    Attributes:
        context_length: tokens per caption, start and end tokens included (≥ 8).
        text_width: the text transformer's width (a multiple of ``text_heads``).
        text_heads: attention heads of the text transformer.
        text_layers: text transformer blocks (≥ 1).
    """

    context_length: int = 24
    text_width: int = 64
    text_heads: int = 2
    text_layers: int = 2

    def __post_init__(self) -> None:
        if self.context_length < 8:
            raise ValueError(f"pretrain: context_length must be >= 8, got {self.context_length}")
        if self.text_layers < 1 or self.text_heads < 1 or self.text_width % self.text_heads:
            raise ValueError(f"pretrain: text_width ({self.text_width}) must be a multiple of text_heads "
                             f"({self.text_heads}) and text_layers >= 1 (got {self.text_layers})")

    def text_cfg(self) -> dict[str, Any]:
        """open_clip's ``CLIPTextCfg`` fields (the vocabulary of open_clip's BPE tokenizer)."""
        return {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                "heads": self.text_heads, "layers": self.text_layers}


@lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """open_clip's BPE tokens ``[N, context_length]`` (int64; longer captions are cut, keeping the end token)."""
    return _tokenizer(context_length)(texts).long()


class ImageTextModel(nn.Module):
    """An open_clip ``CLIP`` whose images are [0, 1] grey tensors.

    Args:
        clip: the open_clip ``CLIP`` (its ``visual`` is a ``clip_vit_tiny`` tower).
        config: the config it was built from (``context_length`` for :meth:`tokens`).
        in_channels: 1 (repeated to RGB) or 3.

    Attributes:
        clip: the open_clip model (its state dict is what is saved).
        image_encoder: :class:`ClipImageEncoder` around ``clip.visual`` (shared, not a copy).
    """

    def __init__(self, clip: nn.Module, config: ClipConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.clip = clip
        self.config = config
        self.image_encoder = ClipImageEncoder(clip.visual, int(CLIP_VIT_TINY["image_size"]), in_channels)

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """The captions' tokens on the model's device."""
        return tokenize(captions, self.config.context_length).to(self.clip.logit_scale.device)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` of [0, 1] images ``[N, C, H, W]``."""
        return F.normalize(self.image_encoder(x).flatten(1), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` of tokens ``[N, L]``."""
        return self.clip.encode_text(tokens, normalize=True)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image embeddings, text embeddings, logit scale)``, as open_clip's ``ClipLoss`` takes them."""
        return self.encode_image(x), self.encode_text(tokens), self.clip.logit_scale.exp()

    def clip_state_dict(self) -> dict[str, torch.Tensor]:
        """The open_clip state dict (``visual.*`` and the text tower): what ``clip.pt`` holds."""
        return {k: v.detach().clone() for k, v in self.clip.state_dict().items()}


def build_clip(config: ClipConfig = ClipConfig(), seed: int = 0, in_channels: int = 1) -> ImageTextModel:
    """A randomly initialised tiny CLIP, the same for the same ``seed``.

    Args:
        config: the text tower's size.
        seed: seeds the initialisation (torch's global generator is saved and restored around it).
        in_channels: the images' channels (1 or 3).

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ImportError: open_clip is not installed (``pip install 'medrobust[clip]'``).
    """
    try:
        from open_clip.model import CLIP
    except ImportError as err:  # pragma: no cover - open_clip is a dependency of the pipeline's lock
        raise ImportError("pretraining needs open_clip: pip install 'medrobust[clip]'") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIP(CLIP_TINY_EMBED, dict(CLIP_VIT_TINY), config.text_cfg(), quick_gelu=True)
    return ImageTextModel(clip, config, in_channels)


__all__ = ["ClipConfig", "ImageTextModel", "build_clip", "tokenize"]
