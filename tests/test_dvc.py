"""The DVC pipeline, run for real in a git repository on tiny data: `dvc repro`, caching, params
narrowed per stage, the check stage, a queued experiment, and the committed dvc.lock."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, leaves, tiny_raw, write_params

BIN = Path(sys.executable).parent
HEADLINE = {"clean_accuracy", "robust_accuracy", "robust_ci_low", "robust_ci_high", "n_test", "gates_passed"}
STAGES = {"synthesize", "ingest", "advgen", "train", "evaluate", "register"}  # the digests' columns


def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # params.yaml's sqlite:///mlflow.db, anchored at the repository root
    return env


def _run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(cwd, str(BIN / "dvc"), *args, check=check)


def _ran(r: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage")}


def _versions(repo: Path, name: str = "medrobust-classifier") -> list[tuple[int, str]]:
    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("SELECT version, run_id FROM model_versions WHERE name = ? ORDER BY version",
                          (name,)).fetchall()


def _columns(repo: Path, *flags: str) -> list[str]:
    """The columns of ``dvc exp show``'s table, as people see it (its Markdown form's header)."""
    header = _dvc(repo, "exp", "show", "--md", *flags).stdout.splitlines()[0]
    return [c.strip() for c in header.strip().strip("|").split("|")]


def _project_leaves() -> set[str]:
    return leaves(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with the project's dvc.yaml, plot templates and .dvcignore, tiny params, and
    the package's sources (a committed symlink, so DVC's experiment workspaces see them too)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "src").symlink_to(REPO / "src")
    write_params(root / "params.yaml", tiny_raw())
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    _run(root, "git", "init", "-q")
    _run(root, "git", "config", "user.email", "ci@example.org")
    _run(root, "git", "config", "user.name", "ci")
    _dvc(root, "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "tiny project")
    return root


@pytest.mark.integration
def test_repro_caching_narrow_params_check_stage_and_a_queued_experiment(repo):
    first = _dvc(repo, "repro")
    assert _ran(first) == {"check", "synthesize", "ingest", "advgen", "train", "evaluate", "register"}
    for out in ("data/ingested/manifest.csv", "data/advgen/manifest.csv", "models/classifier/model.pt",
                "models/classifier/checkpoints/epoch_002.pt", "reports/evaluation/metrics.json",
                "reports/evaluation/headline.json", "reports/decision.json", "dvc.lock"):
        assert (repo / out).exists(), out
    report = (repo / "reports/report.md").read_text()
    assert report.split("\n## ")[-1].startswith("Registry decision: medrobust-classifier version 1")
    assert report.rstrip().splitlines()[-1].startswith("Evaluated model SHA-256")

    # the compact metric for `dvc exp show`; every figure with its CI in metrics.json
    (entry,) = json.loads(_dvc(repo, "metrics", "show", "--json").stdout).values()
    head = entry["data"]["reports/evaluation/headline.json"]["data"]
    assert set(head) == HEADLINE and head["robust_ci_low"] <= head["robust_accuracy"] <= head["robust_ci_high"]
    full = json.loads(_dvc(repo, "metrics", "show", "reports/evaluation/metrics.json", "--json").stdout)
    (entry,) = full.values()
    acc = entry["data"]["reports/evaluation/metrics.json"]["data"]["clean"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and acc["value"] == head["clean_accuracy"]
    plots = json.loads(_dvc(repo, "plots", "show", "--json").stdout)["data"]
    curves = {k: v[0]["content"] for k, v in plots.items() if v[0]["type"] == "vega"}
    assert len(curves) == 5 and any(k.startswith("certified accuracy vs L2 radius") for k in curves), sorted(curves)
    pngs = {k.rsplit("/", 1)[-1] for k in plots if k.endswith(".png")}
    assert pngs == {"robustness.png", "certified.png", "shifts.png", "reliability.png", "roc.png", "saliency.png"}, pngs
    assert all(spec["encoding"]["color"]["field"] == "series" and spec["data"]["values"] for spec in curves.values())

    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "baseline run")
    assert "Running stage" not in _dvc(repo, "repro").stdout
    # the committed dvc.lock is current: a clean clone's `dvc status` changes nothing but absent outputs
    status = json.loads(_dvc(repo, "status", "--json").stdout)
    assert status == {}, status

    # a typo fails in the check stage, before any stage deletes an output
    raw = tiny_raw()
    typo = json.loads(json.dumps(raw))
    typo["train"]["epoch"] = 3
    write_params(repo / "params.yaml", typo)
    failed = _dvc(repo, "repro", check=False)
    assert failed.returncode != 0 and _ran(failed) == {"check"}
    assert "train.epoch" in failed.stderr + failed.stdout and "Traceback" not in failed.stderr
    assert (repo / "models/classifier/model.pt").exists() and (repo / ".medrobust/stage-params.yaml").exists()

    # train depends on the active method's settings only; register on its own section
    other = json.loads(json.dumps(raw))
    other["train"]["methods"]["trades"] = {"beta": 3.0}
    other["register"]["model_name"] = "medrobust-other"
    write_params(repo / "params.yaml", other)
    assert _ran(_dvc(repo, "repro")) == {"check", "register"}
    _run(repo, "git", "checkout", "params.yaml")
    assert _ran(_dvc(repo, "repro")) == {"check", "register"}  # back to the committed state
    assert len(_versions(repo)) == 1
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "params back", "--allow-empty")

    # the newcomer loop: a queued experiment registers into the repository's registry
    _dvc(repo, "exp", "run", "--queue", "-S", "train.method=trades", "-S", "train.epochs=3")
    _dvc(repo, "exp", "run", "--run-all")
    versions = _versions(repo)
    assert len(versions) == 2, versions
    with sqlite3.connect(repo / "mlflow.db") as db:
        method = db.execute("SELECT value FROM model_version_tags WHERE name='medrobust-classifier' AND version=2 "
                            "AND key='medrobust.method'").fetchone()
    assert method == ("trades",)
    # `dvc exp show`: one column per value params.yaml sets, the six headline metrics, one digest per stage,
    # the deps. This tiny project's params.yaml sets more values than the repository's, so the budget is
    # checked for the repository's: everything but this file's values, plus the repository's values.
    table = _columns(repo)
    tiny_values = leaves(yaml.safe_load((repo / "params.yaml").read_text()))
    rest = [c for c in table if c not in tiny_values]
    assert set(rest) >= HEADLINE | STAGES and len(rest) + len(_project_leaves()) <= 25, (rest, _project_leaves())
    assert {"train.method", "train.epochs", "robust_accuracy"} <= set(_columns(repo, "--only-changed"))
    rows = list(csv.DictReader(io.StringIO(_dvc(repo, "exp", "show", "--csv").stdout)))
    exp = next(r for r in rows if r["typ"] == "branch_base")
    assert exp["train.method"] == "trades" and exp["train.epochs"] == "3" and exp["State"] == "Success"
    # stage-params columns: one digest per stage, not every leaf of train.methods
    snap = yaml.safe_load((repo / ".medrobust/stage-params.yaml").read_text())
    assert set(snap) == STAGES

    # back to the default params: nothing new is registered
    _run(repo, "git", "checkout", "params.yaml")
    _dvc(repo, "repro")
    assert _versions(repo) == versions


def test_committed_dvc_lock_is_current_on_a_fresh_clone(tmp_path):
    """The repository's own dvc.lock matches its dvc.yaml, params.yaml and sources, as committed: on a
    fresh clone `dvc status` reports only outputs that are not there yet (nothing was pulled)."""
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(REPO), str(clone))
    status = json.loads(_dvc(clone, "status", "--json").stdout)
    # a dependency that holds another stage's output (ingest's data/raw holds synthesize's data/raw/synthetic)
    # reads "modified" while that output is not there yet: as absent as a "deleted" one
    outs = [next(iter(o)) if isinstance(o, dict) else o
            for st in yaml.safe_load((clone / "dvc.yaml").read_text())["stages"].values() for o in st.get("outs", [])]
    absent = {d for d in {p for c in status.values() for ch in c if isinstance(ch, dict)
                          for e in ch.values() if isinstance(e, dict) for p in e}
              if any(o.startswith(d.rstrip("/") + "/") and not (clone / o).exists() for o in outs)}
    stale = {}
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                stale.setdefault(stage, []).append(change)  # "changed command", "always changed" ...
                continue
            for kind, entries in change.items():
                bad = ({p: s for p, s in entries.items()
                        if s not in ("deleted", "not in cache") and not (s == "modified" and p in absent)}
                       if isinstance(entries, dict) else entries)
                if bad:
                    stale.setdefault(stage, []).append({kind: bad})
    assert not stale, f"dvc.lock is stale; run `make run` and commit dvc.lock: {stale}"
    # the repository's `dvc exp show` (no outputs here: its six headline metrics come with a run)
    columns = _columns(clone)
    assert not HEADLINE & set(columns) and len(columns) + len(HEADLINE) <= 25, columns
    assert set(columns) >= _project_leaves() | STAGES | {"src/medrobust", "data/ingested", "models/classifier"}
