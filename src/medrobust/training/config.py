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
  ``methods``, ``{method: {parameter: value}}``; ``hflip``, random horizontal flips (default on);
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


#: ``{method: {parameter: value}}``, only the keys params.yaml sets (the rest are the method's defaults).
MethodSettings = _methods_type()


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


class TrainConfig(StrictModel):
    """``train``: the method (:data:`~medrobust.defenses.TRAINING_METHODS`), the model, the loop."""

    method: Annotated[str, InRegistry(TRAINING_METHODS)] = "pgd_at"
    model: ModelConfig = ModelConfig()
    epochs: int = Field(15, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=100_000)
    optim: OptimConfig = OptimConfig()
    methods: MethodSettings = {}  # type: ignore[valid-type]
    hflip: bool = True                                    # random horizontal flips (label-preserving for the default data)
    clean_warmup_epochs: int = Field(2, ge=0, le=10_000)  # first epochs with clean CE, then the method
    num_threads: int = Field(0, ge=0, le=1024)            # 0: let torch decide
    selection: SelectionConfig = SelectionConfig()        # which epoch's weights are kept

    def settings(self, method: str | None = None) -> dict[str, Any]:
        """The hyper-parameters params.yaml sets for ``method`` (default: ``train.method``).

        Args:
            method: a training method name; None: ``train.method``.

        Returns:
            A copy of ``train.methods.<method>`` (empty when it is not set).
        """
        return dict(self.methods.get(method or self.method) or {})

    @model_validator(mode="after")
    def _method_builds(self) -> TrainConfig:
        if self.method not in self.methods:  # its defaults must construct too
            try:
                TRAINING_METHODS[self.method]()
            except (ValueError, TypeError) as exc:
                raise field_error("method", str(exc)) from None
        return self


__all__ = ["MethodSettings", "ModelConfig", "OptimConfig", "SurrogateConfig", "TrainConfig", "method_parameters",
           "method_settings"]
