"""params.yaml as one typed object: its JSON Schema is committed and current, and editors can use it."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from medrobust.config import ConfigError
from medrobust.params import SCHEMA_COMMENT, Params, load_params, params_schema, parse_params, schema_text
from tests.conftest import REPO, tiny_params

SCHEMA = REPO / "params.schema.json"


def test_committed_schema_is_current():
    assert SCHEMA.read_text() == schema_text(), "params.schema.json is stale: run `medrobust params schema`"


@pytest.mark.parametrize("name", ["params.yaml", "params.defaults.yaml"])
def test_params_files_point_editors_at_the_schema_and_validate_against_it(name):
    text = (REPO / name).read_text()
    assert text.splitlines()[0] == SCHEMA_COMMENT
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(yaml.safe_load(text))


def test_schema_names_come_from_the_registries():
    from medrobust.attacks import ATTACKS
    from medrobust.data.sources import SOURCES
    from medrobust.defenses import TRAINING_METHODS
    from medrobust.models import BACKBONES

    defs = params_schema()["$defs"]
    assert defs["DataConfig"]["properties"]["source"]["enum"] == sorted(SOURCES)
    assert defs["TrainConfig"]["properties"]["method"]["enum"] == sorted(TRAINING_METHODS)
    assert defs["ModelConfig"]["properties"]["backbone"]["enum"] == sorted(BACKBONES)
    assert defs["AttackSpec"]["properties"]["name"]["enum"] == sorted(ATTACKS)
    # each training method's section lists exactly its constructor's parameters
    assert set(defs["TrainingMethods"]["properties"]) == set(TRAINING_METHODS)
    assert set(defs["pgd_at"]["properties"]) == {"norm", "eps", "steps", "step_size", "random_start", "warmup_epochs"}
    assert defs["pgd_at"]["additionalProperties"] is False


@pytest.mark.parametrize("raw", [
    {"train": {"epochs": "ten"}}, {"data": {"source": "ftp"}}, {"evaluate": {"shifts": {"severities": [6]}}},
    {"train": {"methods": {"pgd_at": {"gamma": 1}}}}, {"bogus": 1},
])
def test_the_schema_refuses_what_params_yaml_refuses(raw):
    with pytest.raises(ConfigError):
        parse_params(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(params_schema()).validate(raw)


def test_updated_merges_and_validates_again():
    params = tiny_params()
    changed = params.updated({"data": {"workers": 2}, "train": {"methods": {"pgd_at": {"steps": 5}}}})
    assert changed.data.workers == 2 and changed.data.image_size == params.data.image_size
    assert changed.train.methods["pgd_at"] == {**params.train.methods["pgd_at"], "steps": 5}
    assert params.data.workers != 2  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match="data.workers"):
        params.updated({"data": {"workers": -1}})


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(json.loads(Params().model_dump_json())))
    assert load_params(path) == Params()
