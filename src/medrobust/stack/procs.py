"""Processes for the local stack: free ports, detached servers, readiness, stopping by process group.

The servers outlive the ``medrobust stack up`` that starts them, so each one runs in its own session
(``start_new_session``), writes to a log file (never to a pipe, which would tie it to its parent) and
is stopped by signalling its whole process group and waiting until no member is left.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

log = logging.getLogger(__name__)

#: weed derives a gRPC port as the HTTP port + 10000 where no flag overrides it (the mini admin worker)
GRPC_OFFSET = 10000


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says what to fix."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all bound at once, then released)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (SO_REUSEADDR, as servers bind: TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def admin_port(taken: set[int]) -> int:
    """A free port P whose P + GRPC_OFFSET is free too (weed mini's worker dials admin P + 10000)."""
    for _ in range(200):
        port = free_ports(1)[0]
        if port + GRPC_OFFSET < 65536 and not {port, port + GRPC_OFFSET} & taken and is_free(port + GRPC_OFFSET):
            return port
    raise StackError("no free port pair (P, P+10000) on 127.0.0.1 for the SeaweedFS admin server")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def run_as(user: str | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that drops to ``user`` (PostgreSQL refuses to run as root); None: stay."""
    if user is None:
        return None
    entry = pwd.getpwnam(user)

    def drop() -> None:
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)

    return drop


def start(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          user: str | None = None) -> int:
    """Start ``cmd`` detached in its own session, output appended to ``log_path``; its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, preexec_fn=run_as(user))
    return proc.pid


def wait_until(ready: Callable[[], bool], pid: int, what: str, log_path: Path, timeout: float = 60.0) -> float:
    """Seconds until ``ready()`` holds; raises :class:`StackError` with the log's tail if ``pid`` exits or time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not alive(pid):
            raise StackError(f"{what} exited before it was ready; the end of {log_path}:\n{tail(log_path)}")
        try:
            if ready():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not up yet: refused, 503, auth store still migrating...
            pass
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout:.0f} s; the end of {log_path}:\n{tail(log_path)}")


def stop(pid: int, what: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal ``pid``'s process group, wait until no member is alive; SIGKILL the rest after ``timeout``."""
    members = group_members(pid) or ([pid] if alive(pid) else [])
    if not members:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_members(pid) and not alive(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) did not stop in %.0f s; killing it", what, pid, timeout)
    for member in group_members(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def write_private(path: Path, text: str) -> Path:
    """Write a file that holds secrets: created 0600 (never readable by others, not even briefly), then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
    return path


def env_without(*prefixes: str) -> dict[str, str]:
    """This process's environment without the variables that start with ``prefixes`` (a server gets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can walk to ``path`` (every ancestor has o+x)."""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [*reversed(path.parents), path] if p.exists())
