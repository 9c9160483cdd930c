"""Atomic stage outputs and device selection."""

from __future__ import annotations

import pytest
import torch

from medrobust.utils import atomic_output_dir, resolve_device


def test_failed_stage_leaves_previous_outputs_intact(tmp_path):
    out = tmp_path / "stage"
    with atomic_output_dir(out) as tmp:
        (tmp / "result.txt").write_text("v1")
    assert (out / "result.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "result.txt").write_text("half-written v2")
        raise RuntimeError("stage crashed")
    assert (out / "result.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temp folder left behind
    with atomic_output_dir(out) as tmp:
        (tmp / "other.txt").write_text("v3")
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]  # replaced, not merged


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")
