"""Ingest's decode workers die with their parent: a ``kill -9`` of ingest leaves no orphan (issue 14)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from medrobust.utils import pid_alive

# a parent holding ingest's decode pool (the same initializer), its workers busy; it prints their PIDs
_PARENT = r"""
import os, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from medrobust.data.pool import die_with_parent

with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent,
                         initargs=(os.getpid(),)) as pool:
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    time.sleep(1.0)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_decode_workers_die_when_ingest_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(pid_alive(p) for p in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in workers), "decode workers outlived their killed parent"
