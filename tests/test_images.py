"""The container images and the CI workflow: linted for real (hadolint, actionlint), and the image
the compiled pipeline runs is the package's version.

No Docker engine runs here, so the images are not built in this test suite; hadolint is the
strongest offline check of the Dockerfiles available."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu"]


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed (make setup-test installs it)"
    return str(path)


def test_the_pipeline_runs_the_image_of_this_package_version():
    import medrobust
    from medrobust.components.image import BASE_IMAGE

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert medrobust.__version__ == version and BASE_IMAGE.endswith(f":{version}")
    images = set(re.findall(r"image: (\S+)", (REPO / "pipelines" / "medrobust_pipeline.yaml").read_text()))
    assert images == {BASE_IMAGE}
    for dockerfile in DOCKERFILES:  # the build command each Dockerfile documents tags the same version
        assert f":{version} ." in dockerfile.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint_and_run_unprivileged(dockerfile):
    r = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = dockerfile.read_text()
    assert text.count("FROM ") >= 2 and "USER 1000" in text  # multi-stage, non-root
    assert not re.search(r"FROM \S+:latest", text)  # pinned bases


def test_hadolint_catches_what_it_should(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    r = subprocess.run([_tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3008" in r.stdout


def test_dockerignore_keeps_data_and_registries_out_of_the_image():
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything excluded, then only what the build copies
    assert {r.lstrip("!") for r in rules if r.startswith("!")} == {"pyproject.toml", "requirements.lock", "README.md",
                                                                  "src/"}


def test_workflows_pass_actionlint_and_ci_runs_the_readme_command(tmp_path):
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    r = subprocess.run([_tool("actionlint"), *map(str, workflows)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "run: make test" in (REPO / ".github" / "workflows" / "ci.yml").read_text()
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n")
    r = subprocess.run([_tool("actionlint"), str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "nope" in r.stdout


def test_retrain_workflow_triggers_compiles_pushes_submits_waits_and_posts_the_decision():
    """retrain.yml (actionlint passes above): its triggers, its steps in order, and every medrobust command it
    runs exists with the options it passes (checked by the CLI's own parser, so a renamed option fails here)."""
    import yaml
    from typer.testing import CliRunner

    from medrobust.cli import app

    text = (REPO / ".github" / "workflows" / "retrain.yml").read_text()
    flow = yaml.safe_load(text)
    on = flow[True]  # YAML 1.1 reads the key `on` as True
    assert set(on["push"]["paths"]) == {"params.yaml", "dvc.lock", "**/*.dvc"} and on["push"]["branches"] == ["main"]
    assert on["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"] and "workflow_dispatch" in on
    assert flow["concurrency"]["cancel-in-progress"] is False
    runs = "\n".join(step.get("run", "") for step in flow["jobs"]["retrain"]["steps"])
    order = ["medrobust check", "medrobust pipeline compile", "dvc push -r team", "medrobust pipeline submit",
             "--wait", "medrobust registry show latest", "GITHUB_STEP_SUMMARY"]
    positions = [runs.index(s) for s in order]
    assert positions == sorted(positions), dict(zip(order, positions, strict=True))
    # every secret it reads is documented in its header, and each one reaches the job's environment
    secrets = set(re.findall(r"secrets\.([A-Z0-9_]+)", text))
    header = text.split("name: retrain")[0]
    assert secrets and all(s in header for s in secrets), secrets
    assert {k for k, v in flow["jobs"]["retrain"]["env"].items() if "secrets." in str(v)} == secrets
    # the commands exist, with these options: parse each one with --help appended
    joined = re.sub(r"\\\n\s*", " ", runs)
    commands = []
    for segment in re.findall(r"\.venv/bin/medrobust ([^|\n;>]*)", joined):
        tokens = segment.split()
        words = []
        for token in tokens:
            if token.startswith("-"):
                break
            words.append(token)
        commands.append((" ".join(words), " ".join(t for t in tokens if t.startswith("--"))))
    assert len(commands) >= 5
    submit = next(options for words, options in commands if words.strip() == "pipeline submit")
    assert {"--host", "--namespace", "--experiment", "--run-name", "--wait", "--timeout"} <= set(re.findall(r"--[a-z-]+", submit))
    for words, options in commands:
        names = re.findall(r"--[a-z-]+", options)
        help_text = CliRunner().invoke(app, [*words.split(), "--help"], terminal_width=200)
        assert help_text.exit_code == 0, (words, help_text.output)
        for name in names:
            assert name in help_text.output, (words, name)
