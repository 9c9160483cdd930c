"""The house rules that review would otherwise have to catch (the import layers are checked by
`lint-imports`, which `make test` runs before pytest)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medrobust"
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_private_name_of_another(path):
    tree = ast.parse(path.read_text())
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.startswith("medrobust")
               for alias in node.names if alias.name.startswith("_")]
    private += [alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names if any(part.startswith("_") and part != "__future__"
                                               for part in alias.name.split("."))]
    assert not private, f"{path.relative_to(SRC)} imports private names: {private}"


def test_no_source_file_is_over_the_size_limit():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these files (over {MAX_LINES} lines): {long}"


def test_code_names_papers_by_title_not_by_a_path_outside_the_repository():
    offending = [str(p.relative_to(SRC)) for p in _modules() if "shared/seeds" in p.read_text()]
    assert not offending, offending
