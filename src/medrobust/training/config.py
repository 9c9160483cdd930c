"""``train:`` of params.yaml (and the model/optimiser parts advgen's surrogate shares).

``train.methods.<name>`` holds each training method's hyper-parameters. Its schema is built from
the registry: one mapping per :data:`~medrobust.defenses.TRAINING_METHODS` entry whose keys and
types are the method constructor's parameters (an ε-typed parameter accepts ``"8/255"``), and a
method's settings are checked by constructing it, so the method's own range checks speak too. A
method registered by a plugin gets its section, and its JSON Schema, with no second list to edit.

The fields (listed here: a section's class docstring is its description in the JSON Schema):

* :class:`OptimConfig` — ``name`` (``sgd`` or ``adam``, the default); ``lr``, the initial learning rate
  (1e-8 .. 10, default 3e-3), cosine-decayed towards 0 over the epochs; ``weight_decay`` (0 .. 1, default 0);
  ``momentum``, SGD's (0 .. 1, default 0.9; Adam ignores it).
* :class:`ModelConfig` — ``backbone`` (default ``small_cnn``); ``width`` (1 .. 1024, default 16; used by
  ``small_cnn`` and ``mlp``); ``head`` (``default``: the backbone's own, or a :data:`~medrobust.models.HEADS`
  name); ``head_hidden``, the ``mlp`` / ``ran`` heads' hidden width (0: the feature width); ``pretrained``, a
  local weights file (empty: random initialisation); ``trainable`` (``all``, ``last_block``, ``head`` or
  comma-separated parameter-name prefixes).
* :class:`SurrogateConfig` — ``model``; ``epochs`` (1 .. 10,000, default 10); ``batch_size`` (default 32);
  ``optim``; ``weights``, a medrobust ``model.pt`` (with its ``model.json`` beside it) loaded instead of training.
* :class:`TrainConfig` — ``method`` (default ``pgd_at``; its defaults must construct when ``methods`` has no
  section for it); ``model``; ``epochs`` (1 .. 10,000, default 15); ``batch_size`` (default 32); ``optim``;
  ``methods``, ``{method: {parameter: value}}`` merged key by key over :data:`METHOD_DEFAULTS`; ``hflip``, random horizontal flips (default on);
  ``clean_warmup_epochs``, first epochs of clean cross-entropy (default 2); ``num_threads`` (0: torch's default).
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

from medrobust.config import InRegistry, StrictModel, config_error, field_error
from medrobust.defenses import TRAINING_METHODS
from medrobust.models import BACKBONES, HEADS

#: the method parameters set by the pipeline, never by params.yaml
RESERVED = ("self", "seed")
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class OptimConfig(StrictModel):
    """``optim``: the optimiser (cosine learning-rate decay over the epochs)."""

    name: Literal["sgd", "adam"] = "adam"
    lr: float = Field(3e-3, ge=1e-8, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, le=1.0)


class ModelConfig(StrictModel):
    """``model``: the backbone (:data:`~medrobust.models.BACKBONES`), its head, local weights, trainable layers."""

    backbone: Annotated[str, InRegistry(BACKBONES)] = "small_cnn"
    width: int = Field(16, ge=1, le=1024)
    head: Annotated[str, InRegistry(HEADS, extra=("default",))] = "default"  # default: the backbone's own
    head_hidden: int = Field(0, ge=0, le=100_000)
    pretrained: str = ""    # a local weights file (torchvision ImageNet, CLIP, or a medrobust model.pt); empty: random init
    trainable: str = "all"  # all | last_block | head | comma-separated parameter-name prefixes


class SurrogateConfig(StrictModel):
    """``advgen.surrogate``: the model advgen attacks to make its transfer sets (standard training)."""

    model: ModelConfig = ModelConfig()
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=100_000)
    optim: OptimConfig = OptimConfig()
    weights: str = ""  # optional path of a medrobust model.pt to load instead of training


def method_parameters(name: str) -> dict[str, Any]:
    """``{parameter: type}`` of a training method's constructor, as params.yaml may set them.

    ``self``, ``seed`` (set by the pipeline) and ``*args`` / ``**kwargs`` are left out; an
    unannotated parameter has type ``Any``.

    Args:
        name: a :data:`~medrobust.defenses.TRAINING_METHODS` name.

    Returns:
        Parameter name → its type hint (``Annotated`` extras kept), in signature order.

    Raises:
        KeyError: an unknown method.
    """
    init = TRAINING_METHODS[name].__init__
    hints = typing.get_type_hints(init, include_extras=True)
    return {p.name: hints.get(p.name, Any) for p in inspect.signature(init).parameters.values()
            if p.name not in RESERVED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _constructs(name: str) -> Any:
    def check(settings: dict[str, Any]) -> dict[str, Any]:
        try:
            TRAINING_METHODS[name](**settings)
        except (ValueError, TypeError) as exc:
            raise PydanticCustomError("invalid", "{message}", {"message": str(exc)}) from None
        return settings

    return check


def _settings_type(name: str) -> Any:
    fields = {param: NotRequired[tp] for param, tp in method_parameters(name).items()}
    settings = TypedDict(name, fields)  # type: ignore[misc]  # the functional form: names are the method's
    settings.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return Annotated[settings, AfterValidator(_constructs(name))]


def _methods_type() -> Any:
    fields = {name: NotRequired[_settings_type(name)] for name in sorted(TRAINING_METHODS)}
    methods = TypedDict("TrainingMethods", fields)  # type: ignore[misc]
    methods.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return methods


#: ``{method: {parameter: value}}``: :data:`METHOD_DEFAULTS` with the keys params.yaml sets merged in
#: (the rest are the method constructor's own defaults).
MethodSettings = _methods_type()

_L_INF = {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255}  # the embedded data's threat model
_AUGMIX = {"jsd_weight": 12.0, "severity": 3}
_BY_MODALITY = {"norm": "l2", "eps": 0.5, "eps_by_modality": {"MG": 0.15, "CR": 2.0, "DX": 2.0},
                "eps_reference_size": 0, "steps": 7, "step_size": None}

#: The project's settings of each training method, where they differ from (or pin) the constructor's: the
#: embedded data's 8/255 L∞ threat model, and each paper's published settings. params.yaml's
#: ``train.methods.<name>`` keys are merged over these, key by key; params.defaults.yaml lists them.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd_at": {**_L_INF, "steps": 7, "random_start": True, "warmup_epochs": 4},
    "trades": {"eps": 8 / 255, "steps": 10, "step_size": 2 / 255, "beta": 6.0},
    "mart": {"eps": 8 / 255, "steps": 10, "step_size": 2 / 255, "beta": 6.0},
    "dual_at": {"r": 0.5, **_L_INF, "steps": 7, "random_start": True},
    "fast_at": {"eps": 8 / 255, "alpha": None},
    "dpaat": {"norm": "l2", "eps": 0.3, "steps": 7, "step_size": 0.15, "random_start": True, "scale_step": True,
              "probe_steps": 1, "avg": "ema", "avg_momentum": 0.9, "schedule": "two_level", "gamma": 0.5,
              "syn": "sym_kl", "syn_weight": 1.0, "cls_on": "adv"},
    "arfl": {"r": 0.5, "lam": 10.0, "attack": "pgd", **_L_INF, "steps": 7, "random_start": True,
             "channel_reduction": "mean", "adv_robust_sign": 1.0},
    "dsbn": {"adv_weight": 1.0, **_L_INF, "steps": 7, "random_start": True, "bn_calibration_images": 512},
    "domain_assimilation": {"alpha": 0.98, "weighting": "alpha_glcm", "levels": 16, "distance": 3,
                            "temperature": 0.5, "metric": "l1"},
    "augmix": {**_AUGMIX, "width": 3, "depth": -1, "mix_alpha": 1.0, "ops": "", "joint_batch": True},
    "robust_augmix": {"jsd_weight": 12.0, **_BY_MODALITY, "severity": 3},
    "rtda": {"jsd_weight": 12.0, **_BY_MODALITY, "severity": 3},
    "ran": {"cov_weight": 0.1, "consistency_weight": 0.1, "adv_weight": 0.1, "margin": 0.5,
            "normalize_consistency": True, "init_centroids": True},
    "linear_probe": {}, "mlp_tuning": {}, "standard": {}, "gaussian_noise": {"sigma": 0.25},
    "smooth_adv": {"sigma": 0.25, "eps": 0.25, "steps": 2, "samples": 2, "warmup_epochs": 0},
}


def _with_method_defaults(given: Any) -> Any:
    """``train.methods`` as written, merged over :data:`METHOD_DEFAULTS` (left as is when not a mapping)."""
    if not isinstance(given, dict):
        return given  # the validator names what is wrong
    merged: dict[str, Any] = {name: dict(settings) for name, settings in METHOD_DEFAULTS.items()
                              if name in TRAINING_METHODS}
    for name, settings in given.items():
        base = merged.get(name)
        merged[name] = {**base, **settings} if isinstance(base, dict) and isinstance(settings, dict) else settings
    return merged


def method_settings(name: str, raw: dict[str, Any] | None, key: str = "") -> dict[str, Any]:
    """Check one method's settings against its constructor: known names, right types, ε fractions.

    Args:
        name: a :data:`~medrobust.defenses.TRAINING_METHODS` name.
        raw: the settings as written in params.yaml.
        key: where they sit in params.yaml, for messages (default ``train.methods.<name>``).

    Returns:
        The coerced settings (only the keys given).

    Raises:
        ConfigError: naming ``<key>.<parameter>`` and what is allowed, or the method's own complaint.
    """
    tp = _settings_type(name)
    try:
        return dict(TypeAdapter(tp).validate_python(raw or {}))
    except ValidationError as exc:
        raise config_error(exc, tp, at=key or f"train.methods.{name}") from None


class SelectionConfig(StrictModel):
    """``train.selection``: which epoch's weights become ``model.pt``.

    ``robust`` (default): the best robust accuracy on the validation split under a cheap PGD of the
    gate's norm at the gate ε (``register.gate_attack``/``gate_eps``), ``steps`` steps on at most
    ``max_images`` images; ``clean``: the best clean validation accuracy; ``last``: the last epoch.
    The latest of equal scores wins.
    """

    metric: Literal["robust", "clean", "last"] = "robust"
    steps: int = Field(5, ge=1, le=1000)
    max_images: int = Field(256, ge=1, le=1_000_000)


class DdpConfig(StrictModel):
    """``train.ddp``: the data-parallel run ``train.distributed`` starts (:mod:`medrobust.training.distributed`)."""

    nproc_per_node: int = Field(0, ge=0, le=64)  # processes (ranks) to start; 0: one per visible GPU (at least 1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with CUDA, else gloo
    sync_bn: bool = False  # batch norm over the global batch (torch.nn.SyncBatchNorm; CUDA only)


class TrainConfig(StrictModel):
    """``train``: the method (:data:`~medrobust.defenses.TRAINING_METHODS`), the model, the loop."""

    method: Annotated[str, InRegistry(TRAINING_METHODS)] = "pgd_at"
    model: ModelConfig = ModelConfig()
    epochs: int = Field(15, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=100_000)
    optim: OptimConfig = OptimConfig()
    methods: MethodSettings = Field(default_factory=lambda: _with_method_defaults({}), validate_default=True)  # type: ignore[valid-type]
    hflip: bool = True                                    # random horizontal flips (label-preserving for the default data)
    clean_warmup_epochs: int = Field(2, ge=0, le=10_000)  # first epochs with clean CE, then the method
    num_threads: int = Field(0, ge=0, le=1024)            # 0: let torch decide
    selection: SelectionConfig = SelectionConfig()        # which epoch's weights are kept
    distributed: bool = False                             # data-parallel under torchrun over train.ddp.nproc_per_node ranks
    ddp: DdpConfig = DdpConfig()

    def settings(self, method: str | None = None) -> dict[str, Any]:
        """The hyper-parameters set for ``method`` (default: ``train.method``): its defaults and params.yaml's.

        Args:
            method: a training method name; None: ``train.method``.

        Returns:
            A copy of ``train.methods.<method>`` (empty for a method with no settings, e.g. a plugin's).
        """
        return dict(self.methods.get(method or self.method) or {})

    @model_validator(mode="before")
    @classmethod
    def _merge_method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and "methods" in data:
            return {**data, "methods": _with_method_defaults(data["methods"])}
        return data

    @model_validator(mode="after")
    def _method_builds(self) -> TrainConfig:
        if self.method not in self.methods:  # its defaults must construct too
            try:
                TRAINING_METHODS[self.method]()
            except (ValueError, TypeError) as exc:
                raise field_error("method", str(exc)) from None
        return self


__all__ = ["METHOD_DEFAULTS", "MethodSettings", "ModelConfig", "OptimConfig", "SurrogateConfig", "TrainConfig", "method_parameters",
           "method_settings"]
