"""medrobust registry list/show/promote/rollback/load against a real sqlite-backed MLflow registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from medrobust.registry import versions
from medrobust.registry.versions import RegistryError
from medrobust.stages import register
from tests.conftest import tiny_gates, tiny_params, tiny_raw

NAME = "medrobust-classifier"


def _champion(registry) -> str:
    return str(registry.get_model_version_by_alias(NAME, "champion").version)


def _as_challenger(registry, candidate, tmp_path):
    """Register ``candidate`` while the champion's recorded clean accuracy is 0.1 above it: @challenger."""
    clean = json.loads((candidate.evaluation / "metrics.json").read_text())["clean"]["accuracy"]["value"]
    assert clean <= 0.9
    registry.set_model_version_tag(NAME, "1", "gate.clean_accuracy.value", f"{clean + 0.1:.6f}")
    d = register.run(tiny_params(), candidate.model, candidate.evaluation, tmp_path / "d.json")
    assert d.status == "challenger"
    return d


def test_list_shows_aliases_status_and_intervals(candidates, registry, tmp_path):
    _as_challenger(registry, candidates[0], tmp_path)
    rows = versions.list_versions(registry, NAME)
    assert [r["version"] for r in rows] == ["2", "1"]
    by = {r["version"]: r for r in rows}
    assert by["1"]["aliases"] == "champion" and by["1"]["status"] == "passed"
    assert by["2"]["aliases"] == "challenger" and by["2"]["status"] == "challenger"
    assert by["2"]["failed_gates"] == "clean_accuracy.change" and by["2"]["method"] == "pgd_at"
    m = json.loads((candidates[0].evaluation / "metrics.json").read_text())["headline"]
    lo, hi = m["clean_accuracy"]["ci"]
    assert by["2"]["clean"] == f"{m['clean_accuracy']['value']:.3f} [{lo:.3f}, {hi:.3f}]"
    assert by["2"]["gate"] == "pgd_linf 8/255" and by["2"]["n_test"] == m["n_test"]
    table = versions.format_table(rows).splitlines()
    assert table[0].split()[:3] == ["version", "aliases", "status"] and len(table) == 3
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        versions.list_versions(registry, "nope")


def test_description_is_the_decision_and_show_adds_the_model_card(candidates, registry, tmp_path):
    _as_challenger(registry, candidates[0], tmp_path)
    mv = registry.get_model_version(NAME, "2")
    assert "@challenger" in mv.description and "| gate | value | threshold | champion | verdict | why |" in mv.description
    assert "| clean_accuracy.change |" in mv.description and "**FAIL**" in mv.description
    assert "whitebox.pgd_linf.8/255.accuracy" in mv.description
    text = versions.show(registry, NAME, "2")
    assert text.startswith(f"# {NAME} version 2 (aliases: @challenger)")
    assert "## Intended use" in text and "## Limitations" in text
    with pytest.raises(RegistryError, match="has no version 99"):
        versions.show(registry, NAME, "99")


def test_manual_promote_rechecks_gates_and_forced_promote_records_the_reason(candidates, registry, tmp_path):
    gates = tiny_params().register
    _as_challenger(registry, candidates[0], tmp_path)
    with pytest.raises(RegistryError, match="version 2 fails clean_accuracy.change"):
        versions.promote(registry, NAME, "2", gates)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        versions.promote(registry, NAME, "2", gates, force=True)
    assert _champion(registry) == "1"
    versions.promote(registry, NAME, "2", gates, force=True, reason="radiology sign-off, ticket 42")
    assert _champion(registry) == "2"
    tags = registry.get_model_version(NAME, "2").tags
    assert tags["medrobust.promotion_reason"] == "radiology sign-off, ticket 42"
    assert tags["medrobust.promotion"] == "forced" and tags["medrobust.promoted_by"]
    assert tags["medrobust.previous_champion"] == "1"


def test_rollback_restores_the_previous_champion(candidates, registry, tmp_path):
    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        versions.rollback(registry, NAME)
    lenient = tiny_params(register={"gates": tiny_gates(tolerance=1.0)})
    d = register.run(lenient, candidates[1].model, candidates[1].evaluation, tmp_path / "d.json")
    assert d.promoted and _champion(registry) == "2"
    assert versions.rollback(registry, NAME) == ("2", "1")
    assert _champion(registry) == "1"
    assert registry.get_model_version(NAME, "2").tags["validation_status"] == "rolled_back"
    assert "from 2" in registry.get_model_version(NAME, "1").tags["medrobust.restored"]


def test_cli_list_and_load_in_a_fresh_process(registry, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw()))
    base = [sys.executable, "-m", "medrobust.cli", "registry"]
    listed = subprocess.run([*base, "list", "--params", str(params)], capture_output=True, text=True, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:3] == ["1", "champion", "passed"]
    loaded = subprocess.run([*base, "load", "@champion", "--params", str(params)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert f"models:/{NAME}@champion: input [2, " in loaded.stdout and "output [2, 2], finite" in loaded.stdout
    latest = subprocess.run([*base, "show", "latest", "--params", str(params)], capture_output=True, text=True,
                            cwd=tmp_path)
    newest = max(int(v.version) for v in registry.search_model_versions(f"name = '{NAME}'"))
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == subprocess.run([*base, "show", str(newest), "--params", str(params)], capture_output=True,
                                           text=True, cwd=tmp_path).stdout
    missing = subprocess.run([*base, "show", "99", "--params", str(params)], capture_output=True, text=True,
                             cwd=tmp_path)
    assert missing.returncode == 2 and "has no version 99" in missing.stderr and "Traceback" not in missing.stderr
