"""A decode worker that crashes or runs out of memory costs one item, not the ingest (issue 14, item 1).

Real processes: ingest's own pool (fork) over a synthetic DICOM folder of >= 256 files, with two
workers. The decoder is replaced, before the pool forks, by one that behaves as a broken C decoder
would on two marked files: it kills its own process with SIGSEGV on one, and allocates 2 GiB on the
other, past ``data.worker_memory_mb``. Everything else decodes as usual.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest

from medrobust.data import items, pool
from medrobust.data.synthetic import generate_tree
from medrobust.stages import ingest
from tests.support.refs import read_quarantine
from tests.conftest import tiny_params

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and RLIMIT_AS are Linux's")


def _marked(raw: bytes | None, uid: str) -> bool:
    return raw is not None and uid.encode() in raw


def test_a_crashing_and_a_memory_hungry_item_are_quarantined_and_every_other_item_is_kept(tmp_path, monkeypatch):
    params = tiny_params(data={"workers": 2, "worker_memory_mb": 256,
                               "synthetic": {"n_patients": 70, "images_per_patient_min": 4,
                                             "images_per_patient_max": 4, "image_size": 32}},
                         validation={"max_quarantine_fraction": 0.5})
    generate_tree(tmp_path / "src", params.data.synthetic)
    files = sorted((tmp_path / "src" / "dicom").rglob("*.dcm"))
    assert len(files) >= pool.POOL_MIN_ITEMS + 16
    crasher, hog = files[40], files[200]
    crash_uid = str(pydicom.dcmread(crasher, stop_before_pixels=True).SOPInstanceUID)
    hog_uid = str(pydicom.dcmread(hog, stop_before_pixels=True).SOPInstanceUID)
    real = items._decode  # decode_pixels' own body: its error handling stays the real one
    parent = os.getpid()

    def broken_decoder(kind, raw, *rest):
        if os.getpid() != parent and _marked(raw, crash_uid):
            os.kill(os.getpid(), signal.SIGSEGV)  # as a decoder's segfault would
        if os.getpid() != parent and _marked(raw, hog_uid):
            np.ones(2**28)  # 2 GiB: past the worker's bound, far inside this machine's memory
        return real(kind, raw, *rest)

    monkeypatch.setattr(items, "_decode", broken_decoder)
    result = ingest.run(params, tmp_path / "out", tmp_path / "src" / "dicom", tmp_path / "src" / "labels.csv")

    root = tmp_path / "src" / "dicom"
    q = read_quarantine(tmp_path / "out" / "quarantine.csv", root, keep_default_na=False)
    got = dict(zip(q["file"], q["reason"], strict=True))
    assert got == {crasher.relative_to(root).as_posix(): "worker_crashed",
                   hog.relative_to(root).as_posix(): "out_of_memory"}
    message = dict(zip(q["reason"], q["message"], strict=True))
    assert "SIGSEGV" in message["worker_crashed"] and "worker_memory_mb" in message["out_of_memory"]
    assert result.n_images == len(files) - 2  # every other item kept, none lost with the broken pool

    # the same folder without faults, in one process: the kept images are the same, byte for byte
    monkeypatch.setattr(items, "_decode", real)
    clean = ingest.run(tiny_params(data={**params.data.model_dump(mode="json"), "workers": 1},
                                   validation={"max_quarantine_fraction": 0.5}),
                       tmp_path / "clean", root, tmp_path / "src" / "labels.csv")
    assert clean.n_images == len(files)
    faulty = pd.read_csv(tmp_path / "out" / "manifest.csv")
    whole = pd.read_csv(tmp_path / "clean" / "manifest.csv")
    assert set(faulty["source_sha256"]) < set(whole["source_sha256"])


def test_one_item_in_a_process_of_its_own_reports_its_outcome_or_how_the_process_died(monkeypatch):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    job = ("array", None, np.full((16, 16), 0.5, np.float32), True, 16, None, 1000)
    out = pool.decode_alone(ctx, job, 256 * 2**20)  # a real decode under a 256 MiB bound
    assert out[0] == "ok" and out[2][0].shape == (16, 16) and float(out[2][0].mean()) == pytest.approx(0.5)
    monkeypatch.setattr(pool, "decode_pixels", lambda *job: os._exit(3))
    died = pool.decode_alone(ctx, job, 0)
    assert died[0] == "rejected" and died[2] == "worker_crashed" and "exit code 3" in died[3]
