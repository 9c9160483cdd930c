"""Models: a backbone registry and one :class:`Classifier` shape every training method relies on.

    >>> model = build_model(ModelSpec("small_cnn", num_classes=2))
    >>> logits = model(x)                         # x in [0, 1]; normalisation is inside the model
    >>> fmap = model.forward_features(x)          # the last conv feature map (ARFL's L_robust)
    >>> emb = model.embed(x)                      # the pooled feature vector (RAN's frozen features)

A classifier is ``adapter → normalize → features → pool → head``:

* ``adapter``: identity, or a learned module that maps 1-channel images to 3 channels (domain
  assimilation, :data:`ADAPTERS`);
* ``normalize``: ``(x − mean) / std`` as buffers, so attacks work in [0, 1] pixel space;
* ``features`` / ``pool`` / ``head`` come from the backbone (:data:`MODELS`); ``head`` may be
  replaced (:data:`HEADS`: ``linear``, ``binary`` — one logit, ``mlp``, ...).

A model is saved as a ``state_dict`` plus a small JSON spec (:class:`ModelSpec`), so loading never
unpickles code (``torch.load(..., weights_only=True)``). ImageNet weights are read from a local
file (``build_model(spec, pretrained=path)``), and :func:`set_trainable` picks which layers train.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from medrobust.models.assimilation import build_assimilation_adapter
from medrobust.models.backbones import BACKBONES, Normalize, Trunk
from medrobust.models.clip import CLIP_BACKBONES, CLIP_SPEC_DEFAULTS
from medrobust.models.dual_bn import DualBatchNorm, bn_route, convert_dual_bn, has_dual_bn
from medrobust.models.ran_head import build_ran_head

MODELS: dict[str, Callable[..., Trunk]] = BACKBONES
MODELS.update(CLIP_BACKBONES)  # clip_vit_b32: an open_clip ViT, local weights (models/clip.py)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def spec_defaults(backbone: str, in_channels: int = 1, pretrained: bool = False) -> dict:
    """The normalisation a backbone expects (timm-style default config), as ModelSpec fields.

    CLIP encoders normalise inside themselves (mean 0, std 1 here). ImageNet-pretrained torchvision
    backbones get the ImageNet mean/std; with 1-channel input (RGB kernels summed) the grey
    equivalents, the means of the three channels' values. Otherwise {} (the spec's own values).
    """
    if backbone.startswith("clip_"):
        return dict(CLIP_SPEC_DEFAULTS)
    if pretrained and backbone in ("resnet18", "resnet50", "densenet121", "vgg16"):
        if in_channels == 3:
            return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        return {"mean": round(sum(IMAGENET_MEAN) / 3, 4), "std": round(sum(IMAGENET_STD) / 3, 4)}
    return {}


class BinaryHead(nn.Module):
    """One logit ``z`` returned as two-class logits ``[−z/2, z/2]``: softmax gives ``sigmoid(z)`` for
    class 1, so cross-entropy on these equals binary cross-entropy on ``z`` (e.g. ARFL's 2-10-10-1 MLP)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([-z / 2, z / 2], dim=1)


def _linear_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    return nn.Linear(dim, num_classes)


def _binary_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    if num_classes != 2:
        raise ValueError(f"the binary head needs 2 classes, got {num_classes}")
    return BinaryHead(dim)


def _mlp_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    hidden = hidden or dim
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


#: head name -> ``build(feature_dim, num_classes, hidden)``; ``default`` keeps the backbone's own head.
HEADS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "linear": _linear_head,
    "binary": _binary_head,
    "mlp": _mlp_head,
    "ran": build_ran_head,  # transform + classifier + class centroids (defenses/ran.py)
}

#: adapter name -> ``build(in_channels) -> (module, out_channels)``; ``none`` is the identity.
ADAPTERS: dict[str, Callable[[int], tuple[nn.Module, int]]] = {
    "none": lambda in_channels: (nn.Identity(), in_channels),
    "assimilation": build_assimilation_adapter,  # texture → colour modules (domain assimilation)
}


class Classifier(nn.Module):
    """``head(pool(features(normalize(adapter(x)))))`` with each part reachable by name."""

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
        """The last convolutional feature map ``[N, C, H, W]`` (the penultimate activations for an MLP)."""
        return self.features(self.normalize(self.adapter(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector the head sees."""
        return self.pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def train(self, mode: bool = True) -> Classifier:
        """As ``nn.Module.train``, but frozen batch-norm layers stay in eval mode (their statistics
        belong to the frozen backbone, see :func:`set_trainable`)."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if getattr(m, "_medrobust_frozen", False):
                    m.eval()
        return self


@dataclass(frozen=True)
class ModelSpec:
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
        d = dict(d)
        for k in ("mean", "std"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


def build_model(spec: ModelSpec, pretrained: str | Path | None = None) -> Classifier:
    """Build the classifier ``spec`` describes; ``pretrained`` is a local ImageNet state_dict for the
    torchvision backbones (nothing is downloaded)."""
    if spec.backbone not in MODELS:
        raise KeyError(f"unknown backbone {spec.backbone!r}; available: {', '.join(sorted(MODELS))}")
    if spec.adapter not in ADAPTERS:
        raise KeyError(f"unknown adapter {spec.adapter!r}; available: {', '.join(sorted(ADAPTERS))}")
    if spec.head != "default" and spec.head not in HEADS:
        raise KeyError(f"unknown head {spec.head!r}; available: default, {', '.join(sorted(HEADS))}")
    encoder_state = _medrobust_state(pretrained) if pretrained else None
    if encoder_state is not None:
        pretrained = None  # a medrobust model: its encoder is loaded below
    adapter, channels = ADAPTERS[spec.adapter](spec.in_channels)
    builder = MODELS[spec.backbone]
    kwargs = {"pretrained": pretrained} if pretrained else {}
    trunk = builder(num_classes=spec.num_classes, in_channels=channels, width=spec.width, **kwargs)
    head = trunk.head if spec.head == "default" else HEADS[spec.head](trunk.feature_dim, spec.num_classes,
                                                                       spec.head_hidden)
    model = Classifier(Normalize(spec.mean, spec.std, channels), trunk.features, trunk.pool, head,
                       adapter=adapter, last_block=tuple(trunk.last_block))
    if encoder_state is not None:
        _load_encoder(model, encoder_state)
    if spec.dual_bn:
        convert_dual_bn(model)
        if not has_dual_bn(model):
            raise ValueError(f"dual_bn: backbone {spec.backbone!r} has no batch-norm layers to duplicate "
                             "(dual batch norm / dsbn needs a backbone with batch norm, e.g. small_cnn, resnet18)")
    return model


def _medrobust_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The state dict at ``path`` if it is a medrobust model's (``model.pt`` of the train stage), else None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found: give a local file (nothing is downloaded "
                                "at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # e.g. a TorchScript archive (OpenAI CLIP): not a medrobust state dict
        return None
    # a medrobust Classifier's state always holds its Normalize buffers; torchvision/CLIP ones never do
    if isinstance(state, dict) and "normalize.mean" in state and "normalize.std" in state:
        return state
    return None


def _load_encoder(model: Classifier, state: dict[str, torch.Tensor]) -> None:
    """Load every non-head tensor of a medrobust model whose name and shape match (the head stays new)."""
    own = model.state_dict()
    take = {k: v for k, v in state.items() if not k.startswith("head.") and k in own and own[k].shape == v.shape}
    encoder_keys = [k for k in own if not k.startswith(("head.", "adapter."))]
    missing = [k for k in encoder_keys if k not in take]
    if not take or missing:
        raise ValueError(f"pretrained medrobust model does not fit this backbone: {len(missing)} encoder tensors "
                         f"missing or of another shape, e.g. {missing[:3]}")
    model.load_state_dict(take, strict=False)


TRAINABLE_CHOICES = ("all", "last_block", "head")


def set_trainable(model: Classifier, which: str = "all") -> list[str]:
    """Choose which parameters train; returns the trainable parameter names.

    ``which``: ``all``; ``last_block`` (the backbone's last block + the head, as ARFL fine-tunes VGG16);
    ``head`` (the head only: a frozen encoder, e.g. linear probing / RAN); or a comma-separated list of
    parameter-name prefixes (``features.layer4,head``). A learned adapter always trains. Batch-norm
    layers whose parameters are all frozen stay in eval mode while the model trains.
    """
    if which == "all":
        prefixes: tuple[str, ...] = ("",)
    elif which == "last_block":
        prefixes = (*model.last_block, "head", "adapter")
    elif which == "head":
        prefixes = ("head", "adapter")
    else:
        prefixes = tuple(p.strip() for p in which.split(",") if p.strip())
        names = [n for n, _ in model.named_parameters()]
        for p in prefixes:
            if not any(n == p or n.startswith(p + ".") for n in names):
                raise ValueError(f"trainable: no parameter starts with {p!r}; choose from {TRAINABLE_CHOICES} "
                                 f"or prefixes such as {sorted({n.rsplit('.', 2)[0] for n in names})[:6]}")

    def keep(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            trainable.append(name)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            m._medrobust_frozen = bool(params) and not any(p.requires_grad for p in params)
    model.train(model.training)
    return trainable


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path, name: str = "model") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / f"{name}.pt")
    (out_dir / f"{name}.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir / f"{name}.pt"


def load_model(model_dir: str | Path, name: str = "model") -> tuple[Classifier, ModelSpec]:
    """Load a model saved by :func:`save_model` (weights only: no code is unpickled)."""
    model_dir = Path(model_dir)
    spec = ModelSpec.from_dict(json.loads((model_dir / f"{name}.json").read_text()))
    model = build_model(spec)
    state = torch.load(model_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, spec


__all__ = ["ADAPTERS", "HEADS", "spec_defaults", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "TRAINABLE_CHOICES", "BinaryHead",
           "Classifier", "DualBatchNorm", "ModelSpec", "Normalize", "bn_route", "build_model", "convert_dual_bn",
           "has_dual_bn", "load_model", "save_model", "set_trainable"]
