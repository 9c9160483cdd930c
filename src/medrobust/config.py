"""The one configuration: ``params.yaml``, parsed into typed dataclasses and validated when read.

Every knob of every stage lives here. DVC reads the same file for its ``params:`` dependencies and
the Kubeflow pipeline passes its text to each component, so the three runners can never disagree.

Validation is strict: an unknown key, a wrong type or a value outside its allowed set stops with a
:class:`ConfigError` naming the full key (``train.method``) and what is allowed.

Epsilons are fractions of the [0, 1] pixel range and may be written as ``"8/255"``.

Example:
    >>> params = load_params("params.yaml")
    >>> params.train.method
    'pgd_at'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

__all__ = [
    "AttackSpec",
    "ConfigError",
    "Params",
    "load_params",
    "parse_eps",
    "parse_params",
]

Norm = Literal["linf", "l2"]


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key and the allowed values."""


def parse_eps(value: Any, key: str = "eps") -> float:
    """Parse an epsilon written as a number or a fraction string such as ``"8/255"``.

    Raises:
        ConfigError: if the value is not a non-negative number or fraction.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{key}: expected a number or a fraction like '8/255', got {value!r}"
            ) from None
    else:
        raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {value!r}")
    if out < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    return out


def _bounds(lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    return field(metadata={"lo": lo, "hi": hi}, **kw)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """Embedded default data: a synthetic mammography-like DICOM study tree."""

    n_patients: int = _bounds(3, 100_000, default=120)
    images_per_patient_min: int = _bounds(1, 100, default=3)
    images_per_patient_max: int = _bounds(1, 100, default=5)
    image_size: int = _bounds(32, 4096, default=128)
    lesion_fraction: float = _bounds(0.0, 1.0, default=0.5)
    monochrome1_fraction: float = _bounds(0.0, 1.0, default=0.25)
    seed: int = 1234


@dataclass(frozen=True)
class SplitConfig:
    train: float = _bounds(0.0, 1.0, default=0.6)
    val: float = _bounds(0.0, 1.0, default=0.2)
    test: float = _bounds(0.0, 1.0, default=0.2)


@dataclass(frozen=True)
class DicomConfig:
    """How DICOM pixel data is turned into one grey image (every DICOM source)."""

    multiframe: Literal["reject", "first", "middle"] = "reject"  # 3-D volumes / cine: quarantine or take a frame
    color: Literal["luma", "reject"] = "luma"                   # RGB/YBR (dermoscopy): ITU-R BT.601 luma, or quarantine
    max_pixels: int = _bounds(64, 2**31, default=50_000_000)    # larger frames are quarantined (rows*columns*frames)


@dataclass(frozen=True)
class PacsConfig:
    """A PACS: DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET via pynetdicom).

    Credentials never live here: DICOMweb reads ``MEDROBUST_PACS_USER`` / ``MEDROBUST_PACS_PASSWORD``
    (HTTP basic) or ``MEDROBUST_PACS_TOKEN`` (bearer) from the environment.
    """

    protocol: Literal["dicomweb", "dimse"] = "dicomweb"
    url: str = ""                                 # DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    filters: dict[str, str] = field(default_factory=dict)  # QIDO / C-FIND keys, each sent at its level (study/series/instance), e.g. {Modality: MG, StudyDate: 20200101-20201231}
    host: str = "127.0.0.1"                       # DIMSE peer
    port: int = _bounds(0, 65535, default=4242)
    called_aet: str = "ORTHANC"
    calling_aet: str = "MEDROBUST"
    retrieve: Literal["move", "get"] = "move"     # DIMSE retrieval: C-MOVE to our own storage SCP, or C-GET
    move_port: int = _bounds(0, 65535, default=0)  # our storage SCP's port for C-MOVE (0: a free port)
    timeout_s: float = _bounds(1.0, 3600.0, default=60.0)


@dataclass(frozen=True)
class S3Config:
    """An S3 bucket (AWS or any S3-compatible store). Credentials come from the environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or a profile), never from here."""

    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""                        # empty: AWS; e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO
    region: str = "us-east-1"
    labels_key: str = ""                          # a labels CSV inside the bucket; empty: data.labels_csv (local)
    max_object_bytes: int = _bounds(1, None, default=512 * 1024 * 1024)


@dataclass(frozen=True)
class MedmnistConfig:
    """A MedMNIST ``.npz`` file as the medmnist package writes it (``<flag>[_<size>].npz``)."""

    path: str = ""
    flag: str = ""                                # pneumoniamnist | breastmnist | dermamnist | chestmnist | organamnist; empty: from the file name
    multilabel: str = "any"                       # ChestMNIST: any (normal vs finding) or one finding's name (absent vs present)


@dataclass(frozen=True)
class HamConfig:
    """HAM10000: image folder(s) plus ``HAM10000_metadata.csv``; splits are grouped by lesion_id."""

    images_dir: str = ""
    metadata_csv: str = ""


@dataclass(frozen=True)
class CmmdConfig:
    """CMMD (TCIA): the DICOM tree plus the clinical table (CSV or XLSX: ID1, LeftRight, classification)."""

    dicom_dir: str = ""
    clinical_table: str = ""


@dataclass(frozen=True)
class ImageFolderConfig:
    """One sub-folder per class (PNG/JPEG/TIFF/BMP); an optional CSV ``file,group`` groups images (e.g. by patient)."""

    root: str = ""
    groups_csv: str = ""


@dataclass(frozen=True)
class TwoMoonsConfig:
    """sklearn ``make_moons`` (the ARFL paper's toy data), scaled into [0, 1]."""

    n_train: int = _bounds(10, 10_000_000, default=10_000)
    n_test: int = _bounds(10, 10_000_000, default=1_000)
    noise: float = _bounds(0.0, 10.0, default=0.2)
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    source: Literal[
        "synthetic", "dicom_folder", "pacs", "s3", "medmnist", "image_folder", "ham10000", "cmmd", "two_moons"
    ] = "synthetic"
    dicom_dir: str = "data/raw/synthetic/dicom"
    labels_csv: str = "data/raw/synthetic/labels.csv"
    classes: tuple[str, ...] = ("normal", "lesion")
    image_size: int = _bounds(8, 1024, default=64)
    shard_size: int = _bounds(1, 1_000_000, default=256)
    split: SplitConfig = SplitConfig()
    workers: int = _bounds(0, 64, default=0)     # decode processes for sources of >= 256 items; 0: one per core (<= 4); 1: none
    use_source_splits: bool = True               # keep a source's official train/val/test (MedMNIST, two_moons)
    synthetic: SyntheticConfig = SyntheticConfig()
    dicom: DicomConfig = DicomConfig()
    pacs: PacsConfig = PacsConfig()
    s3: S3Config = S3Config()
    medmnist: MedmnistConfig = MedmnistConfig()
    ham10000: HamConfig = HamConfig()
    cmmd: CmmdConfig = CmmdConfig()
    image_folder: ImageFolderConfig = ImageFolderConfig()
    two_moons: TwoMoonsConfig = TwoMoonsConfig()


@dataclass(frozen=True)
class ValidationConfig:
    """Great Expectations thresholds for the ingest manifest."""

    min_class_fraction: float = _bounds(0.0, 1.0, default=0.2)
    max_class_fraction: float = _bounds(0.0, 1.0, default=0.8)
    max_quarantine_fraction: float = _bounds(0.0, 1.0, default=0.2)
    min_images_per_split: int = _bounds(1, None, default=8)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite: the threat model (norm) always travels with the epsilons.

    ``name`` is any key of :data:`medrobust.attacks.ATTACKS`; options left out (null) take the
    attack's own documented default, and an option the attack does not take is an error.
    """

    name: str
    norm: Norm = "linf"
    eps: tuple[float, ...] = (8 / 255,)
    steps: int | None = _bounds(0, 100_000, default=None)
    step_size: float | None = None
    random_start: bool | None = None
    n_restarts: int | None = _bounds(1, 1000, default=None)
    n_queries: int | None = _bounds(1, 1_000_000, default=None)

    @property
    def key(self) -> str:
        return f"{self.name}_{self.norm}"


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam"] = "adam"
    lr: float = _bounds(1e-8, 10.0, default=3e-3)
    weight_decay: float = _bounds(0.0, 1.0, default=0.0)
    momentum: float = _bounds(0.0, 1.0, default=0.9)


@dataclass(frozen=True)
class ModelConfig:
    """The backbone (:data:`medrobust.models.MODELS`), its head, local ImageNet weights, trainable layers."""

    backbone: str = "small_cnn"
    width: int = _bounds(1, 1024, default=16)
    head: str = "default"  # default (the backbone's) | linear | binary | mlp | ... (medrobust.models.HEADS)
    head_hidden: int = _bounds(0, 100_000, default=0)
    pretrained: str = ""  # a local torchvision ImageNet state_dict file; empty: random init
    trainable: str = "all"  # all | last_block | head | comma-separated parameter-name prefixes


@dataclass(frozen=True)
class SurrogateConfig:
    """The model that advgen attacks to make its transfer set (trained with standard training)."""

    model: ModelConfig = ModelConfig()
    epochs: int = _bounds(1, 10_000, default=10)
    batch_size: int = _bounds(1, 100_000, default=32)
    optim: OptimConfig = OptimConfig()
    weights: str = ""  # optional path of a state_dict to load instead of training


@dataclass(frozen=True)
class AdvgenConfig:
    surrogate: SurrogateConfig = SurrogateConfig()
    attacks: tuple[AttackSpec, ...] = (
        AttackSpec(name="fgsm", eps=(4 / 255, 8 / 255)),
        AttackSpec(name="pgd", eps=(4 / 255, 8 / 255), steps=10, random_start=True),
    )
    batch_size: int = _bounds(1, 100_000, default=128)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "pgd_at"  # a name of medrobust.defenses.DEFENSES
    model: ModelConfig = ModelConfig()
    epochs: int = _bounds(1, 10_000, default=15)
    batch_size: int = _bounds(1, 100_000, default=32)
    optim: OptimConfig = OptimConfig()
    # per-method hyper-parameters, ``{method: {param: value}}``; checked against the method's signature
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    hflip: bool = True  # random horizontal flips (label-preserving for the default data)
    clean_warmup_epochs: int = _bounds(0, 10_000, default=2)  # first epochs with clean CE, then the method
    num_threads: int = _bounds(0, 1024, default=0)  # 0: let torch decide


@dataclass(frozen=True)
class MaskingConfig:
    """Gradient-masking checks (:mod:`medrobust.evaluation.masking`)."""

    enabled: bool = True
    n_points: int = _bounds(8, 1_000_000, default=128)
    large_eps: float = 1.0  # an L∞ budget that must drive accuracy to about 0
    large_eps_max_accuracy: float = _bounds(0.0, 1.0, default=0.1)
    tolerance: float = _bounds(0.0, 1.0, default=0.03)
    square_queries: int = _bounds(1, 1_000_000, default=300)


@dataclass(frozen=True)
class ShiftsConfig:
    """Natural shifts (MedMNIST-C style); an empty ``names`` takes the modality's default set."""

    enabled: bool = True
    names: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class EvaluateConfig:
    attacks: tuple[AttackSpec, ...] = (
        AttackSpec(name="fgsm", eps=(2 / 255, 4 / 255, 8 / 255)),
        AttackSpec(name="pgd", eps=(2 / 255, 4 / 255, 8 / 255), steps=20, random_start=True),
        AttackSpec(name="autoattack", eps=(8 / 255,), steps=30, n_queries=300),
    )
    batch_size: int = _bounds(1, 100_000, default=128)
    early_stop: bool = True  # attack only points still classified correctly (same numbers, faster)
    masking: MaskingConfig = MaskingConfig()
    shifts: ShiftsConfig = ShiftsConfig()


@dataclass(frozen=True)
class GatesConfig:
    min_clean_accuracy: float = _bounds(0.0, 1.0, default=0.85)
    min_robust_accuracy: float = _bounds(0.0, 1.0, default=0.5)
    gate_attack: str = "pgd_linf"
    gate_eps: float = 8 / 255
    champion_tolerance: float = _bounds(0.0, 1.0, default=0.02)
    require_masking_checks: bool = True  # every gradient-masking check must pass


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "medrobust-classifier"
    gates: GatesConfig = GatesConfig()


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "medrobust"


@dataclass(frozen=True)
class Params:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    advgen: AdvgenConfig = AdvgenConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register: RegisterConfig = RegisterConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------
_EPS_FIELDS = {"eps", "step_size", "gate_eps", "large_eps", "alpha"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, fname: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError(f"{key}: may not be null")
        return _coerce(value, args[0], key, fname)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _ktp, vtp = get_args(tp)
        if vtp is Any:
            return dict(value)
        return {str(k): _coerce(v, vtp, f"{key}.{k}", fname) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value] if fname == "eps" else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_rest) = get_args(tp)
        return tuple(_coerce(v, inner, f"{key}[{i}]", fname) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if fname in _EPS_FIELDS and tp is float:
        return parse_eps(value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params.yaml'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = prefix or "top level"
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [prefix, str(unknown[0])]))!r} in {where}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{'.'.join(filter(None, [prefix, name]))}: required key missing")
            continue
        key = ".".join(filter(None, [prefix, name]))
        val = _coerce(raw[name], hints[name], key, name)
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if val is not None and (lo is not None and val < lo or hi is not None and val > hi):
            raise ConfigError(f"{key}: {val!r} is out of range; allowed: [{lo}, {hi}]")
        kwargs[name] = val
    return cls(**kwargs)


def _check_semantics(p: Params) -> None:
    s = p.data.split
    if abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split: train + val + test must sum to 1, got {s.train + s.val + s.test:g}"
        )
    if len(p.data.classes) < 2 or len(set(p.data.classes)) != len(p.data.classes):
        raise ConfigError(f"data.classes: need >= 2 distinct class names, got {p.data.classes!r}")
    syn = p.data.synthetic
    if syn.images_per_patient_min > syn.images_per_patient_max:
        raise ConfigError(
            "data.synthetic.images_per_patient_min must be <= images_per_patient_max"
        )
    if p.validation.min_class_fraction > p.validation.max_class_fraction:
        raise ConfigError("validation.min_class_fraction must be <= max_class_fraction")
    _check_models(p)
    _check_methods(p)
    _check_attacks(p.advgen.attacks, "advgen.attacks")
    _check_attacks(p.evaluate.attacks, "evaluate.attacks")
    _check_shifts(p.evaluate.shifts)
    gate_keys = {a.key for a in p.evaluate.attacks}
    g = p.register.gates
    if g.gate_attack not in gate_keys:
        raise ConfigError(
            f"register.gates.gate_attack: {g.gate_attack!r} is not evaluated; "
            f"allowed values (from evaluate.attacks): {', '.join(sorted(gate_keys))}"
        )
    evaluated = [e for a in p.evaluate.attacks if a.key == g.gate_attack for e in a.eps]
    if not any(abs(e - g.gate_eps) < 1e-9 for e in evaluated):
        raise ConfigError(
            f"register.gates.gate_eps: {g.gate_eps:.6g} is not among the evaluated epsilons of "
            f"{g.gate_attack}; allowed values: {', '.join(f'{e:.6g}' for e in evaluated)}"
        )


def _check_models(p: Params) -> None:
    from medrobust.models import HEADS, MODELS

    for where, m in (("train.model", p.train.model), ("advgen.surrogate.model", p.advgen.surrogate.model)):
        if m.backbone not in MODELS:
            raise ConfigError(f"{where}.backbone: {m.backbone!r} is not allowed; allowed values: "
                              f"{', '.join(sorted(MODELS))}")
        if m.head != "default" and m.head not in HEADS:
            raise ConfigError(f"{where}.head: {m.head!r} is not allowed; allowed values: default, "
                              f"{', '.join(sorted(HEADS))}")


def coerce_method_params(method: str, raw: dict[str, Any], key: str) -> dict[str, Any]:
    """Check ``raw`` against the training method's constructor: known names, right types, ε fractions.

    Returns the coerced parameters; raises :class:`ConfigError` naming ``key.param``.
    """
    import inspect

    from medrobust.defenses import DEFENSES

    if method not in DEFENSES:
        raise ConfigError(f"{key}: unknown training method {method!r}; allowed values: {', '.join(sorted(DEFENSES))}")
    cls = DEFENSES[method]
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    allowed = [n for n in sig.parameters if n not in ("self", "seed") and
               sig.parameters[n].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    out: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: {method} takes no {name!r}; it takes: {', '.join(allowed) or 'nothing'}")
        tp = hints.get(name, Any)
        fname = "eps" if name.startswith("eps") or name in _EPS_FIELDS else name
        out[name] = value if tp is Any else _coerce(value, tp, f"{key}.{name}", fname)
    try:
        cls(**out)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return out


def _check_methods(p: Params) -> None:
    methods = p.train.methods
    for name in list(methods):
        methods[name] = coerce_method_params(name, methods[name] or {}, f"train.methods.{name}")
    if p.train.method not in methods:
        coerce_method_params(p.train.method, {}, "train.method")


def _check_attacks(specs: tuple[AttackSpec, ...], where: str) -> None:
    from medrobust.attacks import ATTACKS, attack_params

    for i, spec in enumerate(specs):
        key = f"{where}[{i}]"
        if spec.name not in ATTACKS:
            raise ConfigError(f"{key}.name: {spec.name!r} is not allowed; allowed values: {', '.join(sorted(ATTACKS))}")
        norms = ATTACKS[spec.name].norms
        if spec.norm not in norms:
            raise ConfigError(f"{key}.norm: {spec.name} does not support {spec.norm!r}; allowed values: {', '.join(norms)}")
        allowed = set(attack_params(spec.name))
        for opt in ("steps", "step_size", "random_start", "n_restarts", "n_queries"):
            if getattr(spec, opt) is not None and opt not in allowed:
                raise ConfigError(f"{key}.{opt}: {spec.name} takes no {opt!r}; it takes: "
                                  f"{', '.join(sorted(allowed - {'norm', 'eps', 'targeted', 'seed'}))}")


def _check_shifts(cfg: ShiftsConfig) -> None:
    from medrobust.evaluation.shifts import SEVERITIES, SHIFTS

    for name in cfg.names:
        if name not in SHIFTS:
            raise ConfigError(f"evaluate.shifts.names: {name!r} is not allowed; allowed values: {', '.join(sorted(SHIFTS))}")
    for s in cfg.severities:
        if s not in SEVERITIES:
            raise ConfigError(f"evaluate.shifts.severities: {s!r} is not allowed; allowed values: {SEVERITIES}")


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as loaded from YAML) and return typed :class:`Params`.

    Raises:
        ConfigError: naming the offending key and the allowed keys or values.
    """
    params = _build(Params, raw or {}, "")
    _check_semantics(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: if the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root?)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_params(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def params_as_text(path: str | Path) -> str:
    """params.yaml as one line of JSON (valid YAML), validated first: what Kubeflow tasks receive.

    One line because kfp copies a parameter's default into a YAML comment header, which a
    multi-line value breaks.
    """
    import json

    load_params(path)
    return json.dumps(yaml.safe_load(Path(path).read_text()), separators=(",", ":"))


def params_from_text(text: str) -> Params:
    """Parse params.yaml given as text (how Kubeflow components receive it)."""
    return parse_params(yaml.safe_load(text))
