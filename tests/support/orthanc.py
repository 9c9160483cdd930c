"""A real Orthanc PACS for integration tests, on loopback ports, with its own config and storage.

:func:`running_orthanc` starts ``/usr/sbin/Orthanc`` (Debian packages ``orthanc`` and
``orthanc-dicomweb``; ``make system-deps`` installs them) with a JSON configuration written to a
temporary folder:

* storage and index in that folder; ``HttpPort`` and ``DicomPort`` on free ports;
* HTTP basic authentication (``AuthenticationEnabled`` + ``RegisteredUsers``) and
  ``RemoteAccessAllowed: false`` (Orthanc 1.10 has no bind address; it refuses non-loopback clients);
* the DICOMweb plugin (QIDO-RS / WADO-RS under ``/dicom-web/``);
* ``DicomAet`` = ``called_aet``, and ``calling_aet`` registered in ``DicomModalities`` at
  ``127.0.0.1:move_port`` with C-FIND, C-MOVE and C-GET allowed.

It waits until the REST API answers and stops the server by its PID at the end (SIGTERM, then
SIGKILL); on Linux the server also gets SIGTERM if the test process dies, so no orphan is left.

When Orthanc is not installed the test **fails** telling to run ``make system-deps``; set
``MEDROBUST_SKIP_PACS=1`` to skip instead (a machine where Debian packages cannot be installed).

Example::

    with running_orthanc(tmp_path) as pacs:
        pacs.upload(Path("CT_small.dcm"))
        url = pacs.dicomweb_url
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import NoReturn
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

log = logging.getLogger(__name__)

ORTHANC_BIN = "/usr/sbin/Orthanc"
SKIP_ENV = "MEDROBUST_SKIP_PACS"
PLUGIN_NAME = "libOrthancDicomWeb.so"


def free_port() -> int:
    """A TCP port nobody listens on right now (Orthanc binds every interface, so check all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def orthanc_binary() -> str:
    """The Orthanc executable; fails (or skips with ``MEDROBUST_SKIP_PACS=1``) when it is missing."""
    found = shutil.which("Orthanc") or (ORTHANC_BIN if os.access(ORTHANC_BIN, os.X_OK) else None)
    if found:
        return found
    _missing(f"Orthanc is not installed ({ORTHANC_BIN} not found): run `make system-deps` "
             f"(apt-get install orthanc orthanc-dicomweb), or set {SKIP_ENV}=1 to skip the PACS tests")


def dicomweb_plugin() -> str:
    """Path of ``libOrthancDicomWeb.so`` as listed by ``dpkg -L orthanc-dicomweb``."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        listing = []
    candidates = [p for p in listing if p.endswith(PLUGIN_NAME)]
    candidates += [f"/usr/share/orthanc/plugins/{PLUGIN_NAME}"]
    for path in candidates:
        if Path(path).exists():
            return path
    _missing(f"the Orthanc DICOMweb plugin ({PLUGIN_NAME}) is not installed: run `make system-deps` "
             f"(apt-get install orthanc-dicomweb), or set {SKIP_ENV}=1 to skip the PACS tests")


def _missing(msg: str) -> NoReturn:
    """A missing system package fails the test run, unless the PACS tests are skipped on purpose."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (no orphaned server)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Orthanc:
    """A running Orthanc; ``auth`` is the (user, password) pair it accepts."""

    http_port: int
    dicom_port: int
    aet: str
    calling_aet: str
    move_port: int
    auth: tuple[str, str]
    root: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, path: Path) -> str:
        """``POST /instances`` one DICOM file; returns Orthanc's instance id."""
        resp = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=60,
                             headers={"Content-Type": "application/dicom"})
        resp.raise_for_status()
        answer = resp.json()
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc did not store {path.name}: {answer}")
        return str(answer["ID"])

    def instance_count(self) -> int:
        resp = requests.get(f"{self.url}/statistics", auth=self.auth, timeout=30)
        resp.raise_for_status()
        return int(resp.json()["CountInstances"])

    def log_tail(self, n: int = 40) -> str:
        path = self.root / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _config(root: Path, http_port: int, dicom_port: int, aet: str, calling_aet: str, move_port: int,
            users: dict[str, str], plugin: str) -> dict[str, object]:
    return {
        "Name": "medrobust-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": users,
        "SslEnabled": False,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        "DicomModalities": {
            "medrobust": {"AET": calling_aet, "Host": "127.0.0.1", "Port": move_port,
                          "AllowEcho": True, "AllowFind": True, "AllowMove": True, "AllowGet": True,
                          "AllowStore": True},
        },
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        "HttpTimeout": 30,
        "StableAge": 60,
        "OrthancExplorerEnabled": False,
        "UserMetadata": {},
        "LoadPrivateDictionary": False,
    }


@contextmanager
def running_orthanc(root: Path, *, aet: str = "ORTHANC", calling_aet: str = "MEDROBUST",
                    users: dict[str, str] | None = None, start_timeout_s: float = 30.0) -> Iterator[Orthanc]:
    """Start Orthanc with its data under ``root``; yields an :class:`Orthanc`; stops it at the end.

    Raises:
        pytest.fail.Exception: Orthanc is missing (unless ``MEDROBUST_SKIP_PACS=1``) or did not start.
    """
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    users = users or {"medrobust": "correct-horse-battery"}
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    while len({http_port, dicom_port, move_port}) < 3:
        dicom_port, move_port = free_port(), free_port()
    cfg_path = root / "orthanc.json"
    cfg_path.write_text(json.dumps(_config(root, http_port, dicom_port, aet, calling_aet, move_port, users, plugin),
                                   indent=2))
    logfile = (root / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(cfg_path)], stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    server = Orthanc(http_port, dicom_port, aet, calling_aet, move_port, next(iter(users.items())), root, process)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with code {process.returncode} at start; its log:\n{server.log_tail()}",
                            pytrace=False)
            try:
                if requests.get(f"{server.url}/system", auth=server.auth, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc's REST API did not answer within {start_timeout_s:.0f} s; its log:\n"
                            f"{server.log_tail()}", pytrace=False)
            time.sleep(0.1)
        log.info("Orthanc (pid %d) on http %d, dicom %d", process.pid, http_port, dicom_port)
        yield server
    finally:
        _stop(process)
        logfile.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL: the server never outlives the test."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


__all__ = ["Orthanc", "free_port", "orthanc_binary", "running_orthanc"]
