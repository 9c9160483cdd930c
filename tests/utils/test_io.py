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


# a stage writing its output, killed with SIGKILL at a chosen point (a real process, a real kill)
_KILLED = r"""
import os, sys, time
from pathlib import Path
from medrobust.utils import io

out, where = Path(sys.argv[1]), sys.argv[2]
real_rename = Path.rename

def rename(self, target):
    result = real_rename(self, target)
    if where == "between" and self.name == out.name:   # the old outputs moved aside, the new ones not yet in place
        print("READY", flush=True); time.sleep(60)
    return result

Path.rename = rename
with io.atomic_output_dir(out) as tmp:
    (tmp / "result.txt").write_text("v2")
    if where == "inside":
        print("READY", flush=True); time.sleep(60)
"""


def _kill_at(out, where):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(out), where], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return proc.pid


@pytest.mark.parametrize("where", ["inside", "between"])
def test_a_stage_killed_while_writing_is_repaired_by_the_next_start(tmp_path, where, caplog):
    """kill -9 mid-write leaves a .tmp- folder; between the swap's renames it leaves no output at all."""
    import logging

    out = tmp_path / "stage"
    with atomic_output_dir(out) as tmp:
        (tmp / "result.txt").write_text("v1")
    pid = _kill_at(out, where)
    litter = sorted(p.name for p in tmp_path.iterdir() if p.name != "stage")
    if where == "inside":
        assert (out / "result.txt").read_text() == "v1" and litter[0].startswith(f".stage.tmp-{pid}-")
    else:
        # the old outputs moved aside, the complete new ones not yet renamed into place: no output at all
        assert not out.exists() and litter[0] == f".stage.old-{pid}" and litter[1].startswith(f".stage.tmp-{pid}-")
    with caplog.at_level(logging.WARNING, logger="medrobust.utils.io"), atomic_output_dir(out) as tmp:
        # the next start repaired it before writing: the previous outputs are back, the litter is gone
        assert (out / "result.txt").read_text() == "v1"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["stage", tmp.name])
        (tmp / "result.txt").write_text("v3")
    assert (out / "result.txt").read_text() == "v3" and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    assert ("restored the previous stage/" if where == "between" else "half-written by a run that died") in caplog.text


def test_the_folder_of_a_run_still_alive_is_left_alone(tmp_path):
    import os

    from medrobust.utils.io import recover_output_dir

    (tmp_path / "stage").mkdir()
    mine = tmp_path / f".stage.tmp-{os.getppid()}-abc"  # the parent (pytest's runner) is alive
    mine.mkdir()
    assert recover_output_dir(tmp_path / "stage") == [] and mine.exists()
