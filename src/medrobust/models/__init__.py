"""Models: backbones, heads and adapters behind registries, one :class:`Classifier` shape, saved as
a ``state_dict`` plus a JSON :class:`ModelSpec`.

    >>> model = build_model(ModelSpec("small_cnn", num_classes=2))
    >>> logits = model(x)                         # x in [0, 1]; normalisation is inside the model

* :mod:`.registry` — :data:`BACKBONES` (with each backbone's :class:`BackboneCfg`), :data:`HEADS`,
  :data:`ADAPTERS`;
* :mod:`.classifier` — :class:`Classifier`, :class:`ModelSpec`, :func:`build_model`;
* :mod:`.backbones`, :mod:`.clip` — the backbones (small CNN, MLP, ResNet18/50, DenseNet121, VGG16,
  CLIP ViT-B/32); :mod:`.heads`, :mod:`.ran_head`, :mod:`.assimilation`, :mod:`.dual_bn`;
* :mod:`.weights` — local weight files (nothing is downloaded); :mod:`.io` — :func:`save_model`,
  :func:`load_model` (``weights_only=True``); :mod:`.trainable` — :func:`set_trainable`;
* :mod:`.inference` — :func:`predict_logits`, :func:`accuracy`.
"""

from medrobust.models import assimilation, clip, heads, ran_head  # noqa: F401 - imported to register their members
from medrobust.models.backbones import Normalize, Trunk
from medrobust.models.classifier import Classifier, ModelSpec, build_model
from medrobust.models.dual_bn import DualBatchNorm, bn_route, convert_dual_bn, dual_bn_layers, has_dual_bn
from medrobust.models.heads import BinaryHead
from medrobust.models.inference import accuracy, predict_logits
from medrobust.models.io import load_model, save_model
from medrobust.models.registry import ADAPTERS, BACKBONES, HEADS, IMAGENET_MEAN, IMAGENET_STD, BackboneCfg, \
    backbone_cfg
from medrobust.models.trainable import TRAINABLE_CHOICES, set_trainable

__all__ = ["ADAPTERS", "BACKBONES", "HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "TRAINABLE_CHOICES", "BackboneCfg",
           "BinaryHead", "Classifier", "DualBatchNorm", "ModelSpec", "Normalize", "Trunk", "accuracy", "backbone_cfg",
           "bn_route", "build_model", "convert_dual_bn", "dual_bn_layers", "has_dual_bn", "load_model",
           "predict_logits", "save_model", "set_trainable"]
