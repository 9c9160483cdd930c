"""Kubeflow: the compiled pipeline matches the committed snapshot, is strictly valid, and its shape
follows the source (no synthesize task for a PACS or a bucket)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medrobust.pipelines.compile import compile_pipeline
from tests.conftest import REPO, tiny_raw, write_params

SNAPSHOT = REPO / "pipelines" / "medrobust_pipeline.yaml"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml", REPO / "params.yaml")


def test_fresh_compile_matches_committed_snapshot(fresh):
    assert fresh.read_text() == SNAPSHOT.read_text(), (
        "the pipeline changed: run `make compile` and commit pipelines/medrobust_pipeline.yaml"
    )


def _body(spec):
    """The tasks inside the exit handler (the whole DAG but the exit task)."""
    return spec.components["comp-exit-handler-1"].dag.tasks


def test_compiled_spec_is_strictly_valid(fresh):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline_doc, platform_doc = list(yaml.safe_load_all(fresh.read_text()))
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    # a dsl.ExitHandler wraps the DAG: its body is one sub-DAG, then pipeline-status runs whatever happened
    root = spec.root.dag.tasks
    assert set(root) == {"exit-handler-1", "pipeline-status"}
    status = root["pipeline-status"]
    assert status.trigger_policy.strategy == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
    assert list(status.dependent_tasks) == ["exit-handler-1"]
    status_inputs = pipeline_doc["components"]["comp-pipeline-status"]["inputDefinitions"]["parameters"]
    assert status_inputs["status"]["parameterType"] == "TASK_FINAL_STATUS"
    assert not status.caching_options.enable_cache
    tasks = _body(spec)
    assert {"synthesize", "ingest", "advgen", "train", "evaluate"} <= set(tasks)
    # register sits under a condition on evaluate's output, in both branches
    text = json.dumps(pipeline_doc)
    assert "pipelinechannel--evaluate-Output" in text and text.count("comp-register") >= 2
    for name in ("advgen", "train", "evaluate"):
        res = spec.deployment_spec["executors"][f"exec-{name}"]["container"]["resources"]
        assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    k8s = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("advgen", "train", "evaluate"):
        assert k8s[f"exec-{name}"]["nodeSelector"]["labels"] == {"medrobust.io/node-pool": "gpu"}
        assert k8s[f"exec-{name}"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # ingest's source credentials and the pseudonymisation key come from an optional secret, never params
    data_env = {e["envVar"]: e["secretKey"] for e in k8s["exec-ingest"]["secretAsEnv"][0]["keyToEnv"]}
    assert k8s["exec-ingest"]["secretAsEnv"][0]["secretName"] == "medrobust-data"
    assert {"MEDROBUST_PACS_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MEDROBUST_PSEUDONYM_KEY"} <= set(data_env)
    assert tasks["train"].retry_policy.max_retry_count == 2
    assert tasks["train"].caching_options.enable_cache


def test_the_attack_suite_fans_out_in_a_parallel_for_and_evaluate_collects_it(fresh):
    """One attack task per entry of evaluate.attacks, side by side on GPUs, merged by evaluate."""
    from medrobust.params import load_params

    pipeline_doc, platform_doc = list(yaml.safe_load_all(fresh.read_text()))
    body = pipeline_doc["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    (loop_name,) = [n for n, t in body.items() if t["taskInfo"]["name"] == "attack-suite"]
    loop = body[loop_name]
    keys = [a.key for a in load_params(REPO / "params.yaml").evaluate.attacks]
    assert json.loads(loop["parameterIterator"]["items"]["raw"]) == keys == ["fgsm_linf", "pgd_linf", "autoattack_linf"]
    assert "iteratorPolicy" not in loop  # kubeflow.attack_parallelism: 0, all at once
    assert set(loop["dependentTasks"]) == {"ingest", "train"}  # not after advgen: the attacks need only the model
    inner = pipeline_doc["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["attack"]
    assert inner["inputs"]["parameters"]["attack_key"]["componentInputParameter"] == loop["parameterIterator"]["itemInput"]
    assert inner["cachingOptions"]["enableCache"] and inner["retryPolicy"]["maxRetryCount"] == 2
    # evaluate takes the list of every iteration's run (dsl.Collected)
    collected = body["evaluate"]["inputs"]["artifacts"]["attacks"]["taskOutputArtifact"]
    assert collected["producerTask"] == loop_name
    assert pipeline_doc["components"]["comp-evaluate"]["inputDefinitions"]["artifacts"]["attacks"]["isArtifactList"]
    res = pipeline_doc["deploymentSpec"]["executors"]["exec-attack"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "1"
    k8s = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-attack"]
    assert k8s["nodeSelector"]["labels"] == {"medrobust.io/node-pool": "gpu"}


def test_attack_parallelism_limits_the_fan_out(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_raw(kubeflow={"attack_parallelism": 2}))
    pipeline_doc, _ = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", params).read_text()))
    body = pipeline_doc["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    (loop,) = [t for t in body.values() if t["taskInfo"]["name"] == "attack-suite"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 2}


@pytest.mark.parametrize("source", ["pacs", "s3", "medmnist"])
def test_a_pipeline_for_a_pacs_or_a_bucket_has_no_synthesize_task(source, tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    params = write_params(tmp_path / "params.yaml", tiny_raw(data={"source": source}))
    out = compile_pipeline(tmp_path / "pipeline.yaml", params)
    pipeline_doc, _ = list(yaml.safe_load_all(out.read_text()))
    tasks = _body(json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec()))
    assert "synthesize" not in tasks and {"ingest", "advgen", "train", "evaluate"} <= set(tasks)
    assert "raw_data" not in tasks["ingest"].inputs.artifacts  # ingest reads the source itself


def test_compile_is_independent_of_the_working_directory(tmp_path, monkeypatch):
    """The installed package never looks for params.yaml itself: --params names it."""
    monkeypatch.chdir(tmp_path)
    out = compile_pipeline(tmp_path / "p.yaml", REPO / "params.yaml")
    assert out.read_text() == SNAPSHOT.read_text()


def test_resources_node_pool_and_retries_come_from_params(tmp_path):
    """kubeflow.* in params.yaml: per-step CPU/memory/GPUs, the GPU model's node selector, the pool's taint."""
    raw = tiny_raw(kubeflow={"resources": {"train": {"gpus": 2, "gpu_type": "nvidia-l4", "memory": "64Gi"},
                                           "evaluate": {"gpus": 0, "cpu": "16"}},
                             "gpu_node_selector": {"pool": "a100"},
                             "gpu_tolerations": [{"key": "gpu", "operator": "Equal", "value": "true",
                                                  "effect": "NoExecute"}],
                             "retries": 4})
    out = compile_pipeline(tmp_path / "p.yaml", write_params(tmp_path / "params.yaml", raw))
    spec, platform = yaml.safe_load_all(out.read_text())
    res = {name.removeprefix("exec-"): e["container"].get("resources", {})
           for name, e in spec["deploymentSpec"]["executors"].items()}
    assert res["train"]["accelerator"]["resourceCount"] == "2" and res["train"]["resourceMemoryLimit"] == "64Gi"
    assert res["train"]["resourceCpuRequest"] == "8"  # the stage's other keys keep their defaults
    assert "accelerator" not in res["evaluate"] and res["evaluate"]["resourceCpuLimit"] == "16"
    assert res["ingest"]["resourceMemoryRequest"] == "8G"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"pool": "a100", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert k8s["exec-train"]["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoExecute"}]
    assert "tolerations" not in k8s.get("exec-evaluate", {}) and k8s["exec-advgen"]["nodeSelector"]["labels"] == {"pool": "a100"}
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 4


def test_a_misspelt_step_in_kubeflow_resources_is_refused_naming_the_steps(tmp_path):
    from medrobust.config import ConfigError

    raw = tiny_raw(kubeflow={"resources": {"trian": {"gpus": 1}}})
    with pytest.raises(ConfigError, match="kubeflow.*trian.*allowed: synthesize, ingest, advgen, train, attack, evaluate, register"):
        compile_pipeline(tmp_path / "p.yaml", write_params(tmp_path / "params.yaml", raw))
