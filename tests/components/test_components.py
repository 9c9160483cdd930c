"""Every stage is a reusable Kubeflow component: compiled to components/<stage>/component.yaml, current,
loadable on its own, and a thin shell (parse params, call the stage, copy the result's fields)."""

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

from medrobust.components import COMPONENTS
from medrobust.pipelines.compile import compile_components
from tests.conftest import REPO

COMMITTED = REPO / "components"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("components")
    compile_components(out)
    return out


@pytest.mark.parametrize("stage", list(COMPONENTS))
def test_committed_component_files_are_current(stage, fresh):
    for name in ("component.yaml", "README.md"):
        assert (fresh / stage / name).read_text() == (COMMITTED / stage / name).read_text(), (
            f"components/{stage}/{name} is stale: run `make compile` and commit components/")


def test_every_stage_has_a_component_and_nothing_else_is_there():
    assert sorted(p.name for p in COMMITTED.iterdir() if p.is_dir()) == sorted(COMPONENTS)
    assert list(COMPONENTS) == ["synthesize", "ingest", "advgen", "train", "attack", "evaluate", "register"]


def test_readme_lists_the_inputs_outputs_and_image():
    text = (COMMITTED / "evaluate" / "README.md").read_text()
    for name in ("params_yaml", "dataset", "adversarial", "model", "evaluation", "metrics", "report", "Output"):
        assert f"`{name}`" in text, name
    assert "ghcr.io/medrobust/medrobust" in text and "load_component_from_file" in text
    ingest = (COMMITTED / "ingest" / "README.md").read_text()
    assert "| input | `raw_data` | system.Dataset | optional |" in ingest
    assert "| input | `params_yaml` | STRING |  | params.yaml as one line of JSON" in ingest


def test_a_pipeline_built_from_the_yaml_files_alone_compiles(tmp_path):
    """What another team does: load the committed component files, wire them, compile (no medrobust import)."""
    from google.protobuf import json_format
    from kfp import compiler, components, dsl
    from kfp.pipeline_spec import pipeline_spec_pb2

    load = {stage: components.load_component_from_file(str(COMMITTED / stage / "component.yaml"))
            for stage in COMPONENTS}

    @dsl.pipeline(name="reuse-medrobust")
    def reuse(params_yaml: str = "{}"):
        raw = load["synthesize"](params_yaml=params_yaml)
        ing = load["ingest"](params_yaml=params_yaml, raw_data=raw.outputs["raw_data"])
        adv = load["advgen"](params_yaml=params_yaml, dataset=ing.outputs["dataset"])
        trn = load["train"](params_yaml=params_yaml, dataset=ing.outputs["dataset"])
        with dsl.ParallelFor(items=["fgsm_linf", "pgd_linf"]) as key:
            att = load["attack"](params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                                 attack_key=key)
        ev = load["evaluate"](params_yaml=params_yaml, dataset=ing.outputs["dataset"],
                              adversarial=adv.outputs["adversarial"], model=trn.outputs["model"],
                              attacks=dsl.Collected(att.outputs["attacked"]))
        load["register"](params_yaml=params_yaml, dataset=ing.outputs["dataset"], model=trn.outputs["model"],
                         evaluation=ev.outputs["evaluation"])

    out = tmp_path / "reuse.yaml"
    compiler.Compiler().compile(reuse, package_path=str(out))
    spec = json_format.ParseDict(yaml.safe_load(out.read_text()), pipeline_spec_pb2.PipelineSpec())
    assert set(spec.root.dag.tasks) == set(COMPONENTS) - {"attack"} | {"for-loop-2"}
    assert set(spec.components["comp-for-loop-2"].dag.tasks) == {"attack"}
    executor = spec.deployment_spec["executors"]["exec-train"]["container"]
    assert executor["image"].startswith("ghcr.io/medrobust/medrobust") and "train" in " ".join(executor["command"])


@pytest.mark.parametrize("stage", list(COMPONENTS))
def test_a_component_only_parses_params_calls_its_stage_and_copies_fields(stage):
    func = COMPONENTS[stage].python_func
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in imported if m.startswith("medrobust")} <= {"medrobust.params", "medrobust.stages",
                                                                 "medrobust.utils"}, imported
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    entry = "run_attack" if stage == "attack" else "run"  # the fan-out's unit lives in the evaluate stage
    runs = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == entry
            and isinstance(c.func.value, ast.Name) and c.func.value.id == "stage"]
    assert len(runs) == 1, f"{stage}: the component must call stage.{entry} exactly once"
    # no branching: whatever depends on params happens inside the stage
    assert not any(isinstance(node, (ast.If, ast.For, ast.While)) for node in ast.walk(tree)), stage
