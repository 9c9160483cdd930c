"""``kill -9`` of a whole ingest (issue 14): killed while its decode workers are busy, no worker
outlives it; killed while it writes its output, it leaves a ``.tmp-*`` folder; either way the
previous output stays intact, and the next run removes the killed run's folder and completes.

Real processes: the ``medrobust ingest`` command line in a child, over a synthetic DICOM folder of
>= 256 files (so the pool runs), with two fork workers; each decode is slowed a little so the kill
lands mid-run. The kill is a SIGKILL of the main process alone, as the OOM killer or ``kill -9``
would send it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medrobust.data import pool
from medrobust.data.synthetic import generate_tree
from medrobust.utils import pid_alive
from tests.conftest import REPO, tiny_raw

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and PR_SET_PDEATHSIG are Linux's")

_CHILD = r"""
import sys, time
from medrobust import cli
from medrobust.data import items

real, pause = items._decode, float(sys.argv[1])
def slow(*args, **kwargs):  # runs in the workers (forked after this patch)
    time.sleep(pause)
    return real(*args, **kwargs)
items._decode = slow
sys.argv = ["medrobust", "ingest", "--params", sys.argv[2], "--dicom-dir", sys.argv[3], "--labels-csv", sys.argv[4],
            "--out", sys.argv[5]]
cli.main()
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _ingest(params: Path, src: Path, out: Path, pause: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(pause), str(params), str(src / "dicom"),
                             str(src / "labels.csv"), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=out.parent, env={**os.environ, "PYTHONPATH": str(REPO)})


def _litter(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def _digest(folder: Path, only: tuple[str, ...] = ()) -> str:
    """Every file of ``folder`` (or only those under the names in ``only``), names and bytes."""
    h = hashlib.sha256()
    files = [p for p in folder.rglob("*") if p.is_file() and (not only or p.relative_to(folder).parts[0] in only)]
    for f in sorted(files):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_ingest_killed_with_busy_workers_leaves_no_orphan_and_the_next_run_cleans_up(tmp_path):
    raw = tiny_raw(data={"workers": 2, "synthetic": {"n_patients": 70, "images_per_patient_min": 4,
                                                       "images_per_patient_max": 4, "image_size": 32}})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    from medrobust.params import parse_params

    generate_tree(tmp_path / "src", parse_params(raw).data.synthetic)
    assert len(list((tmp_path / "src" / "dicom").rglob("*.dcm"))) >= pool.POOL_MIN_ITEMS
    out = tmp_path / "ingested"
    first = _ingest(params, tmp_path / "src", out, pause=0)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    before = _digest(out)
    data = ("manifest.csv", "quarantine.csv", "shards")
    data_before = _digest(out, data)

    doomed = _ingest(params, tmp_path / "src", out, pause=0.05)
    deadline = time.monotonic() + 120
    while len(_children(doomed.pid)) < 2 and time.monotonic() < deadline and doomed.poll() is None:
        time.sleep(0.05)
    workers = _children(doomed.pid)
    assert len(workers) >= 2, doomed.stderr.read()[-3000:]
    time.sleep(1.0)  # the workers are decoding
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in workers), "decode workers outlived the killed ingest"
    assert _digest(out) == before  # the previous output is intact

    # killed again, once it writes its output (validation, shards) into a temporary folder
    doomed = _ingest(params, tmp_path / "src", out, pause=0)
    deadline = time.monotonic() + 120
    while not _litter(tmp_path) and time.monotonic() < deadline and doomed.poll() is None:
        time.sleep(0.02)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    assert _litter(tmp_path), "the kill landed before ingest wrote anything: nothing was tested"
    assert _digest(out) == before

    again = _ingest(params, tmp_path / "src", out, pause=0)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-3000:]
    assert not _litter(tmp_path)
    assert _digest(out, data) == data_before  # the same source and params: the same data, byte for byte
