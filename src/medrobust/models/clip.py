"""CLIP image encoders (OpenAI-style vision transformers) as backbones, with weights from a local file.

The visual tower is built by ``open_clip`` (``pip install 'medrobust[clip]'``) from an architecture
fixed by the backbone's name, so a saved model (``model.json`` + ``model.pt``) rebuilds without its
weight file, and nothing is ever downloaded:

======================  =========  ======  =====  =====  ==========
architecture            embed dim  width   depth  patch  input size
======================  =========  ======  =====  =====  ==========
``clip_vit_b32``        512        768     12     32     224
:data:`CLIP_VIT_B16`    512        768     12     16     224
:data:`CLIP_VIT_L14`    768        1024    24     14     224
``clip_vit_tiny``       64         64      2      8      32
======================  =========  ======  =====  =====  ==========

``clip_vit_tiny`` is the tower of the tiny CLIP that :mod:`medrobust.pretrain` pre-trains from random
weights on this machine (RAN's noisy vision-language pretraining); its ``clip.pt`` loads here. Besides
it, only ``clip_vit_b32`` (OpenAI ViT-B/32; PubMedCLIP is a fine-tuned one) is registered in
:data:`~medrobust.models.registry.BACKBONES`: every registered backbone is built, run and saved by the unit tests,
which takes about 4 s for ViT-B/32, 10 s for ViT-B/16 and a minute for ViT-L/14 (the RAN paper's
backbone, 304M parameters) on CPU. The others are one line away, e.g.
``BACKBONES.add("clip_vit_l14", clip_backbone(768, CLIP_VIT_L14, name="clip_vit_l14"), **CLIP_CFG)``. All use
QuickGELU, as OpenAI's released weights do (``quick_gelu=False`` for GELU towers such as open_clip's
LAION-trained ones).

The trunk (:class:`ClipImageEncoder` as ``features``, ``Flatten`` as ``pool``, a linear ``head``):

* ``model.embed(x)`` is CLIP's image embedding ``[N, D]`` — ``encode_image`` without the final L2
  normalisation (the class token after ``ln_post``, times ``proj``); ``feature_dim`` is the embedding
  width ``D``. This is what linear probing and RAN train on.
* ``features(x)`` (``model.forward_features``) returns that embedding as a ``[N, D, 1, 1]`` map, so the
  package-wide contract "``forward_features`` is an ``[N, C, H, W]`` map, ``pool`` makes it a vector"
  holds; the ViT's patch tokens are not exposed (a method needing a spatial map cannot use CLIP yet).
* 1-channel images are repeated to 3 channels inside ``features`` (a grey image is an RGB image with
  equal channels, as CLIP's PIL preprocessing makes it).
* Images whose size differs from the tower's input size (224 for the names above) are resized inside
  ``features`` with bicubic interpolation (``antialias=True``, no clamping), as CLIP's preprocessing
  resizes with bicubic filtering; the resize is differentiable, so attacks still work in the original
  [0, 1] pixel space and their ε is measured there. Centre cropping is not needed for square images.
* CLIP's per-channel mean/std (:data:`CLIP_MEAN`, :data:`CLIP_STD`) are applied inside ``features``
  after the channel repeat, because a per-channel normalisation cannot be applied to a 1-channel
  image before it. The classifier's own ``normalize`` layer must therefore be the identity: set the
  model spec's ``mean = 0.0`` and ``std = 1.0`` (the registry entry's :data:`CLIP_CFG` does). With other values the
  encoder sees ``(x − mean)/std`` instead of the pixel values its weights were trained on.

Weights (``pretrained=PATH``): an OpenAI/open_clip state dict of the whole CLIP model (its ``visual.*``
entries are used, the text tower's are ignored) or of the visual tower alone; a ``state_dict`` /
``module.`` wrapper (open_clip training checkpoints) is unwrapped. Formats: a ``torch.save`` file
(read with ``weights_only=True``), ``.safetensors``, or OpenAI's TorchScript archives (``ViT-B-32.pt``,
read with ``torch.jit.load`` — TorchScript, not pickled Python). fp16 weights are cast to float32.
The keys must fit the named architecture exactly; anything else is an error naming the keys.
ResNet CLIP towers (``visual.layer1...``) and HF-transformers checkpoints are not supported.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.models.backbones import Trunk
from medrobust.models.registry import BACKBONES

log = logging.getLogger(__name__)

#: OpenAI CLIP's image normalisation (applied inside :class:`ClipImageEncoder`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _import_open_clip() -> Any:
    try:
        from open_clip import model as open_clip_model
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise ImportError("the CLIP backbones need open_clip: pip install 'medrobust[clip]'") from err
    return open_clip_model


class ClipImageEncoder(nn.Module):
    """``visual(normalize(resize(repeat(x))))``: a CLIP visual tower that takes [0, 1] images.

    Args:
        visual: the open_clip ``VisionTransformer`` (input ``[N, 3, S, S]`` normalised, output ``[N, D]``).
        image_size: ``S``, the tower's input size; other sizes are resized (bicubic) to it.
        in_channels: 1 (repeated to RGB) or 3.

    Raises:
        ValueError: ``in_channels`` is neither 1 nor 3.
    """

    def __init__(self, visual: nn.Module, image_size: int, in_channels: int = 1) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"a CLIP backbone takes 1- or 3-channel images, got in_channels={in_channels}")
        self.visual = visual
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``[N, C, H, W]`` → the tower's normalised RGB input ``[N, 3, S, S]``.

        Args:
            x: images in [0, 1] with ``in_channels`` channels.

        Returns:
            The repeated, resized and CLIP-normalised images.

        Raises:
            ValueError: ``x`` has another number of channels.
        """
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels}-channel images, got shape {tuple(x.shape)}")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding as a ``[N, D, 1, 1]`` map (``Flatten`` gives ``encode_image``'s ``[N, D]``)."""
        return self.visual(self.preprocess(x))[:, :, None, None]


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with ``code/`` and ``constants.pkl`` (``torch.save`` zips have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``torch.save`` file, ``.safetensors`` file or TorchScript archive.

    A ``state_dict`` or ``model`` wrapper is unwrapped; ``torch.save`` files are read with ``weights_only=True``.

    Args:
        path: the weights file.

    Returns:
        Name → tensor, on the CPU.

    Raises:
        FileNotFoundError: ``path`` is not a file (nothing is downloaded).
        ValueError: the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights {path} not found: give a local state_dict file "
                                "(nothing is downloaded at run time)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if _is_torchscript(path):  # OpenAI's releases; torch.load(weights_only=True) refuses them
        log.info("reading %s as a TorchScript archive", path)
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"CLIP weights {path}: not a state dict ({err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"CLIP weights {path}: expected a dict of tensors")
    return dict(state)


def visual_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual tower's entries of a CLIP state dict: ``visual.*`` with the prefix removed (after
    dropping a ``module.`` prefix), or the whole dict if it has no ``visual.*`` entries.

    Args:
        state: a whole-CLIP or visual-tower state dict.

    Returns:
        A new dict of the visual tower's tensors (the input is not changed).
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


def load_visual_weights(visual: nn.Module, path: str | Path) -> None:
    """Load the CLIP visual weights in ``path`` into ``visual`` (strict: every key must fit).

    Tensors are cast to float32 before loading.

    Args:
        visual: the open_clip vision tower to fill.
        path: a weights file :func:`read_state_dict` reads.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file holds no state dict, a ResNet tower, or keys or shapes that do not fit ``visual``.
    """
    state = visual_state_dict(read_state_dict(path))
    if any(k.startswith("layer1.") or k.startswith("attnpool.") for k in state):
        raise ValueError(f"CLIP weights {path} are a ResNet visual tower; only ViT towers are supported")
    expected = visual.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"CLIP weights {path} do not fit this architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shapes {mismatched[:5]}")
    visual.load_state_dict({k: v.float() for k, v in state.items()})


def clip_backbone(embed_dim: int, vision_cfg: dict[str, Any], quick_gelu: bool = True,
                  name: str = "clip") -> Callable[..., Trunk]:
    """A backbone builder for an open_clip vision-transformer tower.

    Args:
        embed_dim: the image embedding width ``D`` (``proj``'s output).
        vision_cfg: open_clip ``CLIPVisionCfg`` fields: ``image_size``, ``layers``, ``width``,
            ``patch_size``, and optionally ``head_width`` (default 64), ``mlp_ratio`` ...
        quick_gelu: QuickGELU activations (OpenAI's weights) instead of GELU.
        name: used in messages.

    Returns:
        ``build(num_classes, in_channels=1, width=..., pretrained=None) -> Trunk`` (``width`` is ignored);
        ``build`` raises ImportError without open_clip.

    Raises:
        ValueError: ``vision_cfg["layers"]`` is not an int (not a vision-transformer tower).

    Example:
        >>> BACKBONES.add("clip_tiny", clip_backbone(32, {"image_size": 32, "layers": 2, "width": 64,
        ...                                               "patch_size": 16, "head_width": 32}), **CLIP_CFG)
    """
    if "layers" in vision_cfg and not isinstance(vision_cfg["layers"], int):
        raise ValueError(f"{name}: only vision-transformer towers (an int 'layers') are supported")

    def build(num_classes: int, in_channels: int = 1, width: int = 0,
              pretrained: str | Path | None = None) -> Trunk:
        open_clip_model = _import_open_clip()
        visual = open_clip_model._build_vision_tower(embed_dim, dict(vision_cfg), quick_gelu=quick_gelu)
        if pretrained:
            load_visual_weights(visual, pretrained)
        image_size = vision_cfg.get("image_size", 224)
        features = ClipImageEncoder(visual, int(image_size), in_channels)
        last = int(vision_cfg.get("layers", 12)) - 1
        return Trunk(features, nn.Flatten(1), nn.Linear(embed_dim, num_classes), embed_dim,
                     last_block=[f"features.visual.transformer.resblocks.{last}", "features.visual.ln_post",
                                 "features.visual.proj"])

    build.__name__ = name
    build.__doc__ = (f"CLIP {name}: ViT width {vision_cfg.get('width')}, {vision_cfg.get('layers')} layers, "
                     f"patch {vision_cfg.get('patch_size')}, input {vision_cfg.get('image_size')}, "
                     f"embedding {embed_dim}; local weights through ``pretrained``.")
    return build


#: OpenAI ViT-B/32's visual tower (embedding 512): registered as ``clip_vit_b32``.
CLIP_VIT_B32: dict[str, Any] = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}
#: OpenAI ViT-B/16's visual tower (embedding 512): ``clip_backbone(512, CLIP_VIT_B16)``.
CLIP_VIT_B16: dict[str, Any] = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16}
#: OpenAI ViT-L/14's visual tower (embedding 768): ``clip_backbone(768, CLIP_VIT_L14)``.
CLIP_VIT_L14: dict[str, Any] = {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}

#: the tiny tower :mod:`medrobust.pretrain` trains (embedding :data:`CLIP_TINY_EMBED`): registered as ``clip_vit_tiny``.
CLIP_VIT_TINY: dict[str, Any] = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
CLIP_TINY_EMBED = 64

#: the registry config of a CLIP backbone: it normalises inside itself, so the classifier's
#: ``normalize`` layer is the identity, trained from scratch or not
CLIP_CFG: dict[str, Any] = {"mean": 0.0, "std": 1.0, "pretrained_mean": 0.0, "pretrained_std": 1.0}

clip_vit_b32 = BACKBONES.register("clip_vit_b32", **CLIP_CFG)(clip_backbone(512, CLIP_VIT_B32, name="clip_vit_b32"))
clip_vit_tiny = BACKBONES.register("clip_vit_tiny", **CLIP_CFG)(
    clip_backbone(CLIP_TINY_EMBED, CLIP_VIT_TINY, name="clip_vit_tiny"))

__all__ = ["CLIP_CFG", "CLIP_MEAN", "CLIP_STD", "CLIP_TINY_EMBED", "CLIP_VIT_B16", "CLIP_VIT_B32", "CLIP_VIT_L14",
           "CLIP_VIT_TINY", "ClipImageEncoder", "clip_backbone", "clip_vit_b32", "clip_vit_tiny", "load_visual_weights",
           "read_state_dict", "visual_state_dict"]
