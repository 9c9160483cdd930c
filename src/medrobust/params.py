"""params.yaml — the one configuration — as one typed, validated :class:`Params`.

Every knob of every stage lives in params.yaml. DVC reads the same file for its ``params:``
dependencies and the Kubeflow pipeline passes its text to each component, so the three runners can
never disagree. Each section is defined beside the code it configures and composed here:

==============  ==============================================================
section         defined in
==============  ==============================================================
``data``        :mod:`medrobust.data.config` (each source's settings beside it)
``validation``  :mod:`medrobust.data.validation`
``advgen``      here (:class:`AdvgenConfig`: the surrogate and its attacks)
``train``       :mod:`medrobust.training.config`
``evaluate``    :mod:`medrobust.evaluation.config`
``register``    :mod:`medrobust.registry.config` (the gates: :mod:`medrobust.registry.gates`)
``mlflow``      :mod:`medrobust.registry.tracking`
``kubeflow``    here (:class:`KubeflowConfig`: per-step resources, the GPU node pool; compile time only)
``pretrain``    :mod:`medrobust.pretrain.config` (RAN's noisy pretraining: ``medrobust pretrain``)
==============  ==============================================================

Validation is strict (:mod:`medrobust.config`): an unknown key, a wrong type or a value outside its
allowed set stops with a :class:`~medrobust.config.ConfigError` naming the full key
(``train.method``) and what is allowed; the allowed names of sources, methods, attacks, backbones,
heads and shifts are their registries'. :func:`params_schema` gives the JSON Schema editors use
(``params.schema.json``).

The top-level fields of :class:`Params` (listed here: a class docstring is its JSON Schema description):
``seed`` (0 .. 2**32 − 1, default 42), ``device`` (``auto``: CUDA when available, else CPU; ``cpu``;
``cuda``) and the sections above; ``register.gate_attack`` and ``gate_eps`` must be among those
``evaluate.attacks`` evaluates. :class:`AdvgenConfig` holds ``surrogate`` (the surrogate model, trained or
loaded), ``attacks`` (each (attack, norm, ε) makes one transfer set; default FGSM and PGD-10 with a random
start at 4/255 and 8/255) and ``batch_size`` (images per attack batch, 1 .. 100,000, default 128).

Example:
    >>> params = load_params("params.yaml")
    >>> params.train.method
    'pgd_at'
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from medrobust.attacks.spec import AttackSpec
from medrobust.config import ConfigError, Seed, Seq, StrictModel, config_error, eps_label, field_error, load_yaml
from medrobust.data.config import DataConfig
from medrobust.data.validation import ValidationConfig
from medrobust.evaluation.config import EvaluateConfig
from medrobust.evaluation.shifts import SHIFTS
from medrobust.pretrain.config import PretrainConfig
from medrobust.registry.config import RegisterConfig
from medrobust.registry.tracking import MlflowConfig
from medrobust.training.config import SurrogateConfig, TrainConfig

#: The first line of params.yaml: editors (the YAML language server) autocomplete from the schema.
SCHEMA_COMMENT = "# yaml-language-server: $schema=params.schema.json"


class AdvgenConfig(StrictModel):
    """``advgen``: the surrogate and the attacks that make the transfer sets of the test split."""

    surrogate: SurrogateConfig = SurrogateConfig()
    attacks: Seq[AttackSpec] = (
        AttackSpec(name="fgsm", eps=(4 / 255, 8 / 255)),
        AttackSpec(name="pgd", eps=(4 / 255, 8 / 255), steps=10, random_start=True),
    )
    batch_size: int = Field(128, ge=1, le=100_000)


class StageResources(StrictModel):
    """One Kubeflow step's requests and limits; ``gpus`` > 0 puts it on the GPU node pool."""

    cpu: str = Field("2", pattern=r"^\d+(\.\d+)?m?$")          # Kubernetes quantity: "2", "500m"
    memory: str = Field("8G", pattern=r"^\d+(\.\d+)?(K|M|G|T|Ki|Mi|Gi|Ti)?$")
    gpus: int = Field(0, ge=0, le=16)
    accelerator: str = "nvidia.com/gpu"                          # the extended resource asked for
    gpu_type: str = ""        # e.g. nvidia-l4: a node selector on kubeflow.gpu_type_label; empty: any GPU of the pool


class Toleration(StrictModel):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


_STAGES = ("synthesize", "ingest", "advgen", "train", "attack", "evaluate", "register")  # attack: each fan-out task


def _default_resources() -> dict[str, StageResources]:
    gpu = StageResources(cpu="8", memory="32G", gpus=1)
    return {"synthesize": StageResources(cpu="1", memory="2G"), "ingest": StageResources(cpu="4", memory="8G"),
            "advgen": gpu, "train": gpu, "attack": gpu, "evaluate": gpu, "register": StageResources(cpu="1", memory="4G")}


class KubeflowConfig(StrictModel):
    """``kubeflow``: what each step asks of the cluster, and where GPU steps run. Read when the pipeline is
    compiled (``medrobust pipeline compile``); no DVC stage reads it."""

    resources: dict[str, StageResources] = Field(default_factory=_default_resources, validate_default=True)
    gpu_node_selector: dict[str, str] = Field(default_factory=lambda: {"medrobust.io/node-pool": "gpu"})
    gpu_tolerations: Seq[Toleration] = (Toleration(key="nvidia.com/gpu"),)
    gpu_type_label: str = "cloud.google.com/gke-accelerator"   # the node label naming a node's GPU model
    retries: int = Field(2, ge=0, le=10)        # per deterministic step, backoff 30 s doubling
    attack_parallelism: int = Field(0, ge=0, le=1000)  # attack tasks at once (the ParallelFor); 0: all of them

    @model_validator(mode="before")
    @classmethod
    def _merge_resources(cls, data: Any) -> Any:
        """``resources`` in params.yaml merges over the defaults stage by stage, key by key."""
        if isinstance(data, dict) and isinstance(data.get("resources"), dict):
            merged = {k: v.model_dump() for k, v in _default_resources().items()}
            for stage, spec in data["resources"].items():
                if stage not in merged:
                    raise ValueError(f"resources.{stage}: not a pipeline step; allowed: {', '.join(_STAGES)}")
                merged[stage] = {**merged[stage], **(spec.model_dump() if isinstance(spec, StageResources) else spec)}
            data = {**data, "resources": merged}
        return data


# ``register`` is params.yaml's key; pydantic warns that it shadows ABCMeta.register, a class-level
# method that instances (where the section lives) never see
warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)


class Params(StrictModel):
    """The whole of params.yaml."""

    seed: Seed = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    advgen: AdvgenConfig = AdvgenConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register: RegisterConfig = RegisterConfig()
    mlflow: MlflowConfig = MlflowConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _pretrain_shift_is_known(self) -> Params:
        shift = self.pretrain.downstream.shift
        if shift not in SHIFTS:
            raise field_error("pretrain.downstream.shift", f"unknown shift {shift!r}; allowed values: "
                              f"{', '.join(sorted(SHIFTS))}")
        return self

    @model_validator(mode="after")
    def _gate_is_evaluated(self) -> Params:
        g = self.register
        eps_of: dict[str, list[float]] = {}
        for a in self.evaluate.attacks:
            eps_of.setdefault(a.key, []).extend(a.eps)
            eps_of.setdefault(f"worst_case_{a.norm}", []).extend(a.eps)
        if g.gate_attack not in eps_of:
            raise field_error("register.gate_attack", f"{g.gate_attack!r} is not evaluated; allowed values "
                              f"(from evaluate.attacks): {', '.join(sorted(eps_of))}")
        evaluated = sorted(set(eps_of[g.gate_attack]))
        if not any(abs(e - g.gate_eps) < 1e-9 for e in evaluated):
            raise field_error("register.gate_eps", f"{eps_label(g.gate_eps)} is not among the evaluated "
                              f"epsilons of {g.gate_attack}; allowed values: "
                              f"{', '.join(eps_label(e) for e in evaluated)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every value, defaults included (for logging the run's configuration).

        Returns:
            The nested mapping (``model_dump()``: ε values as floats, sequences as tuples).
        """
        return self.model_dump()

    def updated(self, changes: dict[str, Any]) -> Params:
        """A copy with ``changes`` merged in (nested mappings merge key by key), validated again.

        Args:
            changes: a partial params mapping; a value that is not a mapping replaces the old one.

        Returns:
            The new params (``self`` is unchanged).

        Example:
            >>> params.updated({"data": {"workers": 2}}).data.workers
            2

        Raises:
            ConfigError: the changed params are invalid.
        """
        return parse_params(_merge(self.model_dump(), changes))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as loaded from YAML) and return typed :class:`Params`.

    Args:
        raw: the mapping; None or missing sections take their defaults.

    Returns:
        The validated params.

    Raises:
        ConfigError: naming each offending key and the allowed keys or values.
    """
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise config_error(exc, Params) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the params file.

    Returns:
        The validated params.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation (the message starts with
            the file's path).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root, or pass --params)")
    try:
        raw = load_yaml(path.read_text())
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

    Args:
        path: the params file.

    Returns:
        The file's mapping as compact JSON (``separators=(",", ":")``), as written: defaults are not filled in.

    Raises:
        ConfigError: as :func:`load_params`.
    """
    load_params(path)
    return json.dumps(load_yaml(Path(path).read_text()), separators=(",", ":"))


def params_from_text(text: str) -> Params:
    """Parse params.yaml given as text (how Kubeflow components receive it).

    Args:
        text: YAML or JSON text (:func:`params_as_text`'s output).

    Returns:
        The validated params.

    Raises:
        ConfigError: as :func:`parse_params`.
    """
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"params text is not valid YAML: {exc}") from None
    return parse_params(raw)


def params_schema() -> dict[str, Any]:
    """The JSON Schema of params.yaml (draft 2020-12), generated from :class:`Params`.

    Names that come from a registry (sources, methods, attacks, backbones, heads, shifts) are
    ``enum`` s of the registered names; each training method's section lists its parameters.

    Returns:
        The schema, with ``$schema`` and ``title`` set.
    """
    schema = Params.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "medrobust params.yaml"
    return schema


def schema_text() -> str:
    """:func:`params_schema` as the text of ``params.schema.json``."""
    return json.dumps(params_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


__all__ = ["SCHEMA_COMMENT", "AdvgenConfig", "Params", "load_params", "params_as_text", "params_from_text",
           "params_schema", "parse_params", "schema_text"]
