"""The shared benchmark writer: the command line reproduces the run, and both files carry it."""

from __future__ import annotations

import json
from pathlib import Path

from medrobust.bench.report import command_line, publish


def test_command_line_keeps_only_the_options_that_differ_from_their_defaults():
    assert command_line("train", {"methods": "", "n_batches": 6, "repeats": 5, "out": Path("b/t")},
                        {"n_batches": 6, "repeats": 3}) == "medrobust bench train --repeats 5 --out b/t"
    assert command_line("two-moon", {"lr": 0.005, "seeds": 0}, {"seeds": 0}) == "medrobust bench two-moon --lr 0.005"
    assert command_line("ingest", {"stage": False}, {"stage": True}) == "medrobust bench ingest --no-stage"


def test_publish_writes_json_with_the_command_and_markdown(tmp_path):
    json_path, md_path = publish(tmp_path / "sub" / "bench", {"rows": [1, 2]}, "# table\n", "medrobust bench x")
    assert json.loads(json_path.read_text()) == {"rows": [1, 2], "command": "medrobust bench x"}
    assert md_path.read_text() == "# table\n" and md_path.name == "bench.md"
