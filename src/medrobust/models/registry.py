"""The model families' registries, and what a backbone's entry carries (timm's ``pretrained_cfg``).

* :data:`BACKBONES` — ``build(num_classes, in_channels, width, pretrained=None) -> Trunk``, each
  registered with its :class:`BackboneCfg` fields (``@BACKBONES.register("resnet18", pretrained_mean=...)``);
* :data:`HEADS` — ``build(feature_dim, num_classes, hidden) -> nn.Module``;
* :data:`ADAPTERS` — ``build(in_channels) -> (module, out_channels)``, run before normalisation.

Members register themselves in their own modules (:mod:`.backbones`, :mod:`.clip`, :mod:`.heads`,
:mod:`.ran_head`, :mod:`.assimilation`); :mod:`medrobust.models` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medrobust.utils.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Mean = float | tuple[float, ...]

BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
HEADS: Registry[Callable[..., Any]] = Registry("head")
ADAPTERS: Registry[Callable[..., Any]] = Registry("adapter")


@dataclass(frozen=True)
class BackboneCfg:
    """A backbone's default config, registered with it.

    Attributes:
        mean, std: the normalisation for training from scratch (the classifier's first layer).
        pretrained_mean, pretrained_std: the normalisation its pretrained weights expect (ImageNet's
            for the torchvision backbones); ``None``: the backbone has no pretrained weights of its own.
        in_channels: the input channels it is built for by default (2 for the two-moon MLP).
    """

    mean: Mean = 0.5
    std: Mean = 0.25
    pretrained_mean: Mean | None = None
    pretrained_std: Mean | None = None
    in_channels: int = 1

    @property
    def has_weights(self) -> bool:
        """Whether local pretrained weights (ImageNet, CLIP) can be loaded into it."""
        return self.pretrained_mean is not None

    def normalization(self, in_channels: int = 1, pretrained: bool = False) -> dict[str, Mean]:
        """``{"mean", "std"}`` for a :class:`~medrobust.models.ModelSpec`.

        Pretrained weights bring their normalisation; with 1-channel input (the RGB kernels are
        summed) a per-channel mean/std becomes its grey equivalent, the mean of the three values.

        Args:
            in_channels: the data's channels.
            pretrained: whether the backbone's own pretrained weights are loaded.

        Returns:
            ``{"mean": ..., "std": ...}``, each a scalar or a per-channel tuple.
        """
        mean, std = ((self.pretrained_mean, self.pretrained_std) if pretrained and self.has_weights
                     else (self.mean, self.std))
        if in_channels == 1 and isinstance(mean, tuple):
            mean = round(sum(mean) / len(mean), 4)
            std = round(sum(std) / len(std), 4)  # type: ignore[arg-type]
        return {"mean": mean, "std": std}  # type: ignore[dict-item]


def backbone_cfg(name: str) -> BackboneCfg:
    """The :class:`BackboneCfg` ``name`` was registered with.

    Args:
        name: a :data:`BACKBONES` name.

    Returns:
        The config (a new object on each call).

    Raises:
        KeyError: an unknown backbone, listing the registered ones.
    """
    return BackboneCfg(**BACKBONES.cfg(name))


__all__ = ["ADAPTERS", "BACKBONES", "HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "BackboneCfg", "backbone_cfg"]
