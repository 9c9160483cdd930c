"""infra/: the kustomize overlays, the Kubeflow profiles, the Secret templates and the GPU node pool's
Terraform, validated offline for real.

There is no Kubernetes cluster and no cloud account here, so nothing is applied. What runs for real:
kubectl's built-in kustomize renders the overlays, kubernetes-validate checks them strictly against the
Kubernetes 1.37 schemas, and Checkov scans them and the Terraform. kubernetes-validate has no schema for
the Kubeflow Profile (a CRD), so its fields are checked here. There is no terraform binary (neither
Debian nor PyPI ships a current one, and `terraform validate` needs the Google provider from
registry.terraform.io): the Terraform is parsed with python-hcl2 and checked structurally instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

from medrobust.components.image import BASE_IMAGE
from medrobust.params import Params
from medrobust.pipelines.dag import DATA_ENV, DATA_SECRET, MLFLOW_ENV, MLFLOW_SECRET

#: the GPU node pool the pipeline selects and tolerates by default (kubeflow in params.yaml)
GPU_NODE_SELECTOR = next(iter(Params().kubeflow.gpu_node_selector.items()))
GPU_TOLERATION = Params().kubeflow.gpu_tolerations[0].model_dump(exclude={"value"})
from tests.conftest import REPO

BIN = Path(sys.executable).parent
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
OVERLAYS = {"dev": "medrobust-dev", "prod": "medrobust"}  # overlay -> namespace (a profile's)
GPU_STEPS = 4  # advgen, train, each attack of the fan-out, evaluate: one GPU each (tests/pipelines/test_dag.py)


def _run(*cmd: str, checkov: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if checkov:
        env["CHECKOV"] = checkov
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _render(overlay: str) -> list[dict]:
    res = _run(str(BIN / "kubectl"), "kustomize", str(K8S / "overlays" / overlay))
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def _checkov() -> str:
    path = os.environ.get("CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    if not Path(path).exists():
        pytest.skip("Checkov's own environment is missing: `make lint` (run by `make test`) builds .venv-checkov")
    return path


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_overlay_renders_to_a_strictly_valid_mlflow_server_on_postgres_and_s3(overlay, tmp_path):
    docs = _render(overlay)
    kinds = _by_kind(docs)
    expected = {"ServiceAccount", "Deployment", "Service", "NetworkPolicy"} | ({"PodDisruptionBudget"} if overlay == "prod" else set())
    assert set(kinds) == expected and len(docs) == len(expected)
    assert {d["metadata"]["namespace"] for d in docs} == {OVERLAYS[overlay]}
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    res = _run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(rendered))
    assert res.returncode == 0, res.stdout + res.stderr

    deploy = kinds["Deployment"]
    spec = deploy["spec"]["template"]["spec"]
    (box,) = spec["containers"]
    assert deploy["spec"]["replicas"] == (2 if overlay == "prod" else 1)
    assert box["image"] == BASE_IMAGE  # the project's image, at the package's version
    assert box["command"] == ["mlflow", "server"]
    for arg in ("--workers=1", "--app-name=basic-auth", "--serve-artifacts",
                "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)", "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)"):
        assert arg in box["args"], arg
    refs = {(e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for e in box["env"] if "valueFrom" in e}
    assert ("MLFLOW_BACKEND_STORE_URI", "mlflow-backend") in refs and ("AWS_SECRET_ACCESS_KEY", "mlflow-artifacts") in refs
    assert not [e for e in box["env"] if "value" in e and re.search(r"(?i)password|secret", e["name"])]
    assert box["readinessProbe"]["httpGet"]["path"] == "/health" == box["livenessProbe"]["httpGet"]["path"]
    assert box["resources"]["requests"] and box["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] and box["securityContext"]["readOnlyRootFilesystem"]
    service = kinds["Service"]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 5000


def test_kubernetes_validate_refuses_a_misspelt_field(tmp_path):
    """The validator is not a no-op: a Deployment with ``replica`` (for ``replicas``) fails strictly."""
    deploy = _by_kind(_render("dev"))["Deployment"]
    deploy["spec"]["replica"] = deploy["spec"].pop("replicas")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deploy))
    res = _run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(bad))
    assert res.returncode != 0 and "replica" in res.stdout + res.stderr


def test_secret_templates_hold_placeholders_and_every_key_the_server_and_the_pipeline_read():
    templates = {d["metadata"]["name"]: d for f in (K8S / "secrets").glob("*.template.yaml")
                 for d in yaml.safe_load_all(f.read_text()) if d}
    for name, secret in templates.items():
        assert secret["kind"] == "Secret" and secret["metadata"]["namespace"] in OVERLAYS.values(), name
        for key, value in secret["stringData"].items():
            # a placeholder, an empty optional value, or the in-cluster Service address: never a real secret
            assert "<" in value or value == "" or value == "http://mlflow:5000", (name, key)
    # the pipeline's steps read exactly these keys (pipelines/dag.py, through kfp-kubernetes)
    assert set(templates[DATA_SECRET]["stringData"]) == set(DATA_ENV)
    assert set(templates[MLFLOW_SECRET]["stringData"]) == set(MLFLOW_ENV)
    # every secret key the MLflow server reads has a template
    box = _by_kind(_render("prod"))["Deployment"]["spec"]["template"]["spec"]
    wanted = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
              for e in box["containers"][0]["env"] if "valueFrom" in e}
    wanted |= {(v["secret"]["secretName"], i["key"]) for v in box["volumes"] if "secret" in v for i in v["secret"]["items"]}
    assert all(key in templates[name]["stringData"] for name, key in wanted), wanted


def test_the_kubeflow_profiles_own_the_overlays_namespaces_with_a_gpu_quota():
    """kubernetes-validate has no schema for this CRD (kubeflow.org/v1 Profile): its fields are checked here."""
    profiles = {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "profiles.yaml").read_text()) if d}
    assert set(profiles) == set(OVERLAYS.values())
    for profile in profiles.values():
        assert profile["apiVersion"] == "kubeflow.org/v1" and profile["kind"] == "Profile"
        assert "namespace" not in profile["metadata"]  # cluster-scoped
        assert profile["spec"]["owner"]["kind"] in ("User", "Group") and profile["spec"]["owner"]["name"]
        assert set(profile["spec"]) <= {"owner", "resourceQuotaSpec", "plugins"}
    assert int(profiles["medrobust"]["spec"]["resourceQuotaSpec"]["hard"]["requests.nvidia.com/gpu"]) >= GPU_STEPS


def _unquote(value):
    return value.strip('"') if isinstance(value, str) else value


def test_the_gpu_node_pool_carries_the_label_and_taint_the_compiled_pipeline_selects_and_tolerates():
    """Structural (no terraform binary here): the node pool's label and taint against the pipeline's."""
    tf = {f.name: f.read_text() for f in (INFRA / "terraform" / "gke-gpu-pool").glob("*.tf")}
    main = hcl2.loads(tf["main.tf"])
    ((rtype, pools),) = main["resource"][0].items()
    assert _unquote(rtype) == "google_container_node_pool"
    ((_, pool),) = pools.items()
    (node,) = pool["node_config"]
    labels = {_unquote(k): _unquote(v) for k, v in node["labels"].items()}
    assert labels == {GPU_NODE_SELECTOR[0]: GPU_NODE_SELECTOR[1]}
    (taint,) = node["taint"]
    assert _unquote(taint["key"]) == GPU_TOLERATION["key"] and GPU_TOLERATION["operator"] == "Exists"
    assert _unquote(taint["effect"]) == "NO_SCHEDULE" and GPU_TOLERATION["effect"] == "NoSchedule"
    (accel,) = node["guest_accelerator"]
    assert accel["gpu_driver_installation_config"]  # GKE installs the driver
    assert pool["autoscaling"][0]["min_node_count"] == "${var.min_nodes}"
    # the compiled pipeline asks for exactly that selector and toleration
    _, platform = yaml.safe_load_all((REPO / "pipelines" / "medrobust_pipeline.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [e for e in executors.values() if "tolerations" in e]
    assert len(gpu) == GPU_STEPS
    for e in gpu:
        assert e["nodeSelector"]["labels"] == labels
        assert e["tolerations"] == [GPU_TOLERATION]
    # every variable used is declared, every declared one is used (what `terraform validate` would catch)
    declared = {_unquote(k) for block in hcl2.loads(tf["variables.tf"])["variable"] for k in block}
    used = set(re.findall(r"var\.([a-z_]+)", tf["main.tf"] + tf["outputs.tf"]))
    assert used == declared, (used ^ declared)
    assert hcl2.loads(tf["versions.tf"])["terraform"][0]["required_providers"][0]["google"]


def test_validate_sh_passes_and_checkov_fails_a_privileged_pod(tmp_path):
    checkov = _checkov()
    res = _run("bash", str(INFRA / "validate.sh"), checkov=checkov)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Failed checks: 0" in res.stdout and "2 overlays rendered" in res.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pod.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "medrobust"},
        "spec": {"containers": [{"name": "x", "image": "busybox:latest", "securityContext": {"privileged": True}}]}}))
    res = _run(checkov, "--quiet", "--compact", "--skip-download", "--framework", "kubernetes", "-d", str(bad))
    assert res.returncode != 0 and "CKV_K8S_16" in res.stdout  # "Container should not be privileged"
