"""The machinery of params.yaml: strict pydantic models, ε values, registry names, readable errors.

Each family defines its own section of params.yaml beside its code (``data.pacs`` beside the PACS
source, ``evaluate.masking`` beside the masking checks, ``register.gates`` beside the gates) on top of
:class:`StrictModel`; :mod:`medrobust.params` composes them into the whole file. This module is
the bottom floor they share, and imports nothing of medrobust.

* :class:`StrictModel` — frozen, unknown keys forbidden, no silent type coercion (``"ten"`` is not an
  integer, ``"yes"`` is not a boolean), NaN and infinity refused;
* :data:`Eps` — an ε written as a number or a fraction string such as ``"8/255"`` (:func:`parse_eps`),
  and :func:`eps_label`, its short label;
* :class:`InRegistry` — a name that must be a key of a family's registry; the allowed values (in
  messages and in the JSON Schema) come from the registry itself;
* :func:`config_error` — a pydantic ``ValidationError`` as a :class:`ConfigError` whose lines name the
  full key (``train.methods.pgd_at.eps``) and what is allowed.

Example:
    >>> class Section(StrictModel):
    ...     eps: Eps = 8 / 255
    >>> Section.model_validate({"eps": "4/255"}).eps
    0.01568627450980392
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from fractions import Fraction
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, \
    ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import NotRequired, Required, is_typeddict

__all__ = ["MAX_EPS", "ConfigError", "Eps", "EpsTuple", "InRegistry", "Norm", "Seed", "Seq", "StrictModel",
           "config_error", "eps_label", "field_error", "load_yaml", "parse_eps"]

Norm = Literal["linf", "l2"]


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key and the allowed values."""


#: A random seed: what numpy, torch and Python all accept (numpy's legacy seeding stops at 2**32 - 1).
Seed = Annotated[int, Field(ge=0, lt=2**32, description="a random seed in [0, 2**32)")]

#: The largest L∞ budget (the whole [0, 1] pixel range) and a bound for L2 budgets: the L2 diameter of a
#: 100 x 100 grey image in [0, 1] is 100, and no threat model spends more.
MAX_EPS = {"linf": 1.0, "l2": 100.0}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}): PyYAML would silently keep "
                                f"the last value; write the key once", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (params.yaml, labels side files).

    Raises:
        yaml.YAMLError: the text is not YAML, or a mapping has a key twice (the message names it and its lines).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_eps(value: Any, key: str = "eps") -> float:
    """Parse an epsilon written as a number or a fraction string such as ``"8/255"``.

    Args:
        value: a non-negative int, float or fraction string.
        key: the params.yaml key, for the message.

    Returns:
        The value as a float.

    Raises:
        ConfigError: the value is not a non-negative number or fraction.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {value!r}") from None
    else:
        raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {value!r}")
    if out != out or out in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if out < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    return out


def eps_label(eps: float) -> str:
    """``8/255`` when ε is a whole number of 1/255 steps, else the decimal (``0.3``).

    The label keys ε in ``metrics.json`` and reports, so every family formats it the same way.

    Args:
        eps: the budget in [0, 1] pixel units.

    Returns:
        ``"<k>/255"`` when ``eps · 255`` is within 1e-6 of an integer ``k``, else ``eps`` in ``:.6g`` format.

    Example:
        >>> eps_label(8 / 255), eps_label(0.3)
        ('8/255', '0.3')
    """
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.6g}"


def _eps_value(value: Any) -> float:
    try:
        return parse_eps(value, "")
    except ConfigError as exc:
        raise PydanticCustomError("eps", str(exc).removeprefix(": ")) from None


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _scalar_or_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


_EPS_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0},
                         {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(/\s*\d+(\.\d+)?)?\s*$"}],
               "description": "a number or a fraction of the [0, 1] pixel range, e.g. '8/255'"}

#: An ε (or a step size) in [0, 1] pixel units: a number or a fraction string such as ``"8/255"``.
Eps = Annotated[float, BeforeValidator(_eps_value), WithJsonSchema(_EPS_SCHEMA)]
#: One ε or a list of them (a single value is read as a one-element list).
EpsTuple = Annotated[tuple[Eps, ...], BeforeValidator(_scalar_or_tuple),
                     WithJsonSchema({"anyOf": [_EPS_SCHEMA, {"type": "array", "items": _EPS_SCHEMA}]})]

T = TypeVar("T")
#: A YAML list read as a tuple (frozen models hold tuples).
Seq = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]


class StrictModel(BaseModel):
    """Base of every params.yaml section: frozen, unknown keys forbidden, strict types, finite numbers.

    A section written as an empty mapping (``train:`` with nothing under it) takes its defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              validate_default=False, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        return {} if data is None else data


class InRegistry:
    """Annotation for a name that must be a key of ``registry`` (plus ``extra`` fixed names).

    The check and the JSON Schema's ``enum`` read the registry when they run, so a member registered
    by a plugin after import is allowed too.

    Args:
        registry: the family's registry (any mapping whose keys are the allowed names).
        extra: names allowed besides the registry's (e.g. ``"default"`` for the head).

    Example:
        >>> backbone: Annotated[str, InRegistry(BACKBONES)] = "small_cnn"
    """

    def __init__(self, registry: Mapping[str, Any], extra: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.extra = extra

    def names(self) -> list[str]:
        """The allowed names: ``extra`` first, then the registry's keys, sorted."""
        return [*self.extra, *sorted(self.registry)]

    def check(self, value: str) -> str:
        """The pydantic after-validator: ``value`` if it is allowed.

        Args:
            value: the name read from params.yaml.

        Returns:
            ``value``, unchanged.

        Raises:
            PydanticCustomError: ``value`` is not allowed (``not_allowed``; the message lists the allowed values).
        """
        if value not in self.extra and value not in self.registry:
            raise PydanticCustomError("not_allowed", "{message}", {
                "message": f"{value!r} is not allowed; allowed values: {', '.join(self.names())}"})
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        out = handler(schema)
        out["enum"] = self.names()
        return out


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error raised by a model validator about one of its fields: ``field`` joins the key.

    :func:`config_error` reports it as ``<section>.<field>: <message>``.

    Args:
        field: the field's key relative to the validated model, dotted for nested keys
            (``"register.gate_eps"``).
        message: what is wrong and what is allowed.

    Returns:
        The error, for the validator to raise (``raise field_error("method", str(exc)) from None``).
    """
    return PydanticCustomError("field_error", "{message}", {"field": field, "message": message})


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
_TYPE_WORDS = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "tuple_type": "a list", "list_type": "a list",
}


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp: Any) -> Any:
    """The model / TypedDict / container type inside ``Annotated`` and ``X | None``."""
    while True:
        origin = get_origin(tp)
        if origin in (Annotated, NotRequired, Required):
            tp = get_args(tp)[0]
        elif origin in (types.UnionType, typing.Union):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _fields(tp: Any) -> dict[str, Any]:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if is_typeddict(tp):
        return typing.get_type_hints(tp, include_extras=True)
    return {}


def _walk(tp: Any, loc: tuple[Any, ...]) -> Any:
    if isinstance(tp, _Nested):
        if tuple(loc[: len(tp.base)]) != tp.base:
            return None
        tp, loc = tp.root, tuple(loc[len(tp.base):])
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            args = get_args(tp)
            tp = args[0] if args else Any
        else:
            fields = _fields(tp)
            if part in fields:
                tp = fields[part]
            elif get_origin(tp) is dict:
                tp = get_args(tp)[1]
            else:
                return None
    return tp


def _message(err: dict[str, Any], root: Any) -> tuple[str, str]:
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        where = _key(loc[:-1])
        allowed = sorted(_fields(_walk(root, loc[:-1])))
        full = _key(loc)
        return full, (f"unknown key {full!r} in {where or 'top level'}; allowed keys: {', '.join(allowed)}")
    if kind == "field_error":
        field = str(ctx["field"])
        return _key((*loc, *field.split("."))), str(ctx["message"])
    if kind == "literal_error":
        allowed = re.sub(r" or (?=[^,]*$)", ", ", str(ctx.get("expected", "")))
        return _key(loc), f"{value!r} is not allowed; allowed values: {allowed}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return _key(loc), f"{value!r} is out of range; allowed: {op} {bound}"
    if kind == "finite_number":
        return _key(loc), f"{value!r} is not allowed; must be a finite number"
    if kind == "missing":
        return _key(loc), "required key missing"
    if kind in _TYPE_WORDS:
        return _key(loc), f"expected {_TYPE_WORDS[kind]}, got {value!r}"
    if kind == "value_error":
        return _key(loc), str(ctx.get("error", err["msg"]))
    return _key(loc), str(err["msg"])


def config_error(exc: ValidationError, root: Any, prefix: str = "", at: str = "") -> ConfigError:
    """A :class:`ConfigError` with one line per invalid key: ``<key>: <what is wrong and allowed>``.

    Args:
        exc: the error pydantic raised while validating ``root``.
        root: the validated type (to list the allowed keys of a mapping).
        prefix: prepended to the message (e.g. the params file's path).
        at: the params.yaml key ``root`` was validated at (``train.methods.pgd_at``), prepended to each key.

    Returns:
        The error, for the caller to raise (``raise config_error(exc, Params) from None``); one line per
        key, each key reported once.
    """
    lines: list[str] = []
    seen: set[str] = set()
    base = tuple(at.split(".")) if at else ()
    for err in exc.errors(include_url=False):
        err = {**err, "loc": (*base, *err["loc"])}
        key, message = _message(err, _Nested(base, root) if base else root)
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"{key}: {message}" if key and not message.startswith("unknown key") else message)
    head = f"{prefix}: " if prefix else ""
    return ConfigError(head + ("\n  ".join(lines) if len(lines) == 1 else
                               f"{len(lines)} invalid keys:\n  " + "\n  ".join(lines)))


class _Nested:
    """``root`` seen from the top: ``_walk`` descends ``base`` first (for :func:`config_error`'s ``at``)."""

    def __init__(self, base: tuple[str, ...], root: Any) -> None:
        self.base, self.root = base, root
