"""Local weight files: nothing is ever downloaded, and nothing is unpickled (``weights_only=True``).

* :func:`load_torchvision_state` — a torchvision ImageNet ``state_dict`` into a torchvision network;
* :func:`adapt_first_conv` — a first convolution for 1-channel input (RGB kernels summed);
* :func:`read_medrobust_state` / :func:`load_encoder` — a medrobust ``model.pt`` as a pretrained
  encoder (the frozen-encoder methods' starting point when no ImageNet/CLIP weights are at hand).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn


def load_torchvision_state(net: nn.Module, pretrained: str | Path | None) -> None:
    """Load a torchvision ``state_dict`` from a local file (weights only).

    A ``{"state_dict": ...}`` wrapper is unwrapped; every key must fit ``net``.

    Args:
        net: the torchvision network, filled in place.
        pretrained: the file; None or empty: nothing is loaded.

    Raises:
        FileNotFoundError: ``pretrained`` is not a file.
        ValueError: the weights have missing or unexpected keys for ``net``.
        RuntimeError: a tensor's shape does not fit (raised by ``load_state_dict``).
    """
    if not pretrained:
        return
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found: give a local torchvision state_dict file "
                                "(nothing is downloaded at run time)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained weights {path} do not fit {type(net).__name__}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs; 1 channel sums the RGB kernels.

    Args:
        conv: the first convolution (e.g. built for 3 channels).
        in_channels: the channels the new convolution takes.

    Returns:
        ``conv`` itself when it already takes ``in_channels``; else a new convolution with the same
        output channels, kernel, stride, padding and bias, whose weights are the summed kernels for
        1 channel and a fresh initialisation otherwise.
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new




def read_medrobust_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The state dict at ``path`` if it is a medrobust model's (``model.pt`` of the train stage), else None.

    A medrobust state dict is recognised by its ``normalize.mean`` / ``normalize.std`` buffers.

    Args:
        path: the weights file.

    Returns:
        The state dict, or None for other weights (torchvision, CLIP, a TorchScript archive).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not a torch weights file (or needs unpickling code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found: give a local file (nothing is downloaded "
                                "at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # e.g. a TorchScript archive (OpenAI CLIP): not a medrobust state dict
        return None
    except pickle.UnpicklingError as exc:
        raise ValueError(f"pretrained weights {path} are not a weights file torch can read with weights_only=True "
                         f"({str(exc).splitlines()[0]})") from None
    # a medrobust Classifier's state always holds its Normalize buffers; torchvision/CLIP ones never do
    if isinstance(state, dict) and "normalize.mean" in state and "normalize.std" in state:
        return state
    return None


def load_encoder(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every non-head tensor of a medrobust model whose name and shape match (the head stays new).

    Args:
        model: the classifier to fill, in place.
        state: a medrobust state dict (:func:`read_medrobust_state`).

    Raises:
        ValueError: some encoder tensor of ``model`` is missing from ``state`` or has another shape.
    """
    own = model.state_dict()
    take = {k: v for k, v in state.items() if not k.startswith("head.") and k in own and own[k].shape == v.shape}
    encoder_keys = [k for k in own if not k.startswith(("head.", "adapter."))]
    missing = [k for k in encoder_keys if k not in take]
    if not take or missing:
        raise ValueError(f"pretrained medrobust model does not fit this backbone: {len(missing)} encoder tensors "
                         f"missing or of another shape, e.g. {missing[:3]}")
    model.load_state_dict(take, strict=False)


__all__ = ["adapt_first_conv", "load_encoder", "load_torchvision_state", "read_medrobust_state"]
