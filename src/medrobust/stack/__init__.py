"""A production-like stack on one machine, no Docker: PostgreSQL + SeaweedFS S3 + an MLflow server.

    medrobust stack up        # start the three servers (state in .medrobust/stack/), print how to use them
    source .medrobust/stack/env && dvc repro    # runs and models go to the server, artifacts to S3
    dvc push -r stack         # the DVC remote on the stack's S3 (written to .dvc/config.local)
    medrobust stack status
    medrobust stack down      # stop all three; nothing listens, no process is left

Every listener is on 127.0.0.1 and asks for credentials; the state, the data and the logs live in
one folder, so ``stack down`` then ``stack up`` gives back the same runs, models and objects.
See :mod:`medrobust.stack.services` for each server's settings.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from medrobust.stack import procs, services
from medrobust.stack.procs import StackError
from medrobust.stack.services import DVC_BUCKET, REGION, StackState

log = logging.getLogger(__name__)

ROOT = Path(".medrobust/stack")
DVC_REMOTE = "stack"
ORDER = ("postgres", "s3", "mlflow")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    port: int
    running: bool
    listening: bool


def _port(state: StackState, name: str) -> int:
    return {"postgres": state.pg_port, "s3": state.s3_ports["s3"], "mlflow": state.mlflow_port}[name]


def status(root: Path = ROOT) -> list[ServiceStatus]:
    """Each server's PID, port and whether it runs and listens (empty: the stack was never started)."""
    state = StackState.load(root)
    if state is None:
        return []
    out = []
    for name in ORDER:
        pid = state.pids.get(name)
        port = _port(state, name)
        out.append(ServiceStatus(name, pid, port, bool(pid) and procs.alive(pid), procs.listening(port)))
    return out


def up(root: Path = ROOT, dvc_repo: Path | None = Path(".")) -> StackState:
    """Start whatever is not running yet; write ``<root>/env`` and, in a DVC repository, the ``stack`` remote."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = StackState.load(root) or StackState.new(root)
    state.save()
    logs = root / "logs"
    running = {s.name for s in status(root) if s.running}
    for port_name in ORDER:
        if port_name not in running and not procs.is_free(_port(state, port_name)):
            raise StackError(f"port {_port(state, port_name)} for {port_name} is taken by another program: "
                             f"stop it, or delete {root / 'stack.json'} to pick new ports")
    if "postgres" not in running:
        services.pg_initdb(state)
        state.pids["postgres"] = procs.start(services.pg_command(state), logs / "postgres.log", cwd=Path("/"),
                                             user=services.pg_user())
        state.save()
        procs.wait_until(lambda: services.pg_ready(state), state.pids["postgres"], "PostgreSQL",
                         logs / "postgres.log")
        services.pg_bootstrap(state)
    if "s3" not in running:
        s3_root = root / "s3"
        identity = services.write_identity(s3_root / "identities.json", state.s3_access_key, state.s3_secret_key)
        (s3_root / "tmp").mkdir(parents=True, exist_ok=True)
        state.pids["s3"] = procs.start(services.weed_command(s3_root, state.s3_ports, identity), logs / "s3.log",
                                       cwd=s3_root, env={**procs.env_without("AWS_"), "TMPDIR": str(s3_root / "tmp")})
        state.save()
        procs.wait_until(lambda: services.s3_ready(state), state.pids["s3"], "SeaweedFS S3", logs / "s3.log")
        services.s3_buckets(state)
    if "mlflow" not in running:
        ini = services.write_auth_ini(state)
        state.pids["mlflow"] = procs.start(services.mlflow_command(state), logs / "mlflow.log",
                                           env=services.mlflow_env(state, ini), cwd=root / "mlflow")
        state.save()
        procs.wait_until(lambda: services.mlflow_ready(state), state.pids["mlflow"], "MLflow server",
                         logs / "mlflow.log", timeout=120)
    write_env(state)
    if dvc_repo is not None and (dvc_repo / ".dvc").is_dir():
        configure_dvc_remote(state, dvc_repo)
    return state


def down(root: Path = ROOT, purge: bool = False) -> list[str]:
    """Stop the servers (MLflow, then S3, then PostgreSQL); the names of those that were running.

    ``purge`` also deletes the stack's data: runs, models, objects and credentials.
    """
    root = root.resolve()
    state = StackState.load(root)
    if state is None:
        return []
    stopped = []
    for name in reversed(ORDER):
        pid = state.pids.get(name)
        if pid and procs.alive(pid):
            # PostgreSQL: SIGINT is its "fast" shutdown (SIGTERM waits for every client to leave)
            procs.stop(pid, name, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            stopped.append(name)
    # weed leaves its Unix sockets behind when it stops: the gRPC ones in /tmp (named after our ports only)
    for sock in [*services.weed_sockets(state.s3_ports), *(root / "s3").glob("*.sock")]:
        sock.unlink(missing_ok=True)
    state.pids = {}
    state.save()
    if purge:
        pg = Path(state.pg_data)
        shutil.rmtree(pg.parent if pg.parent.name.startswith("medrobust-stack-") else pg, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return stopped


def write_env(state: StackState) -> Path:
    """``<root>/env``: ``export`` lines for a shell (``source .medrobust/stack/env``); it holds secrets (0600)."""
    return procs.write_private(Path(state.root) / "env",
                               "".join(f"export {k}={shlex.quote(v)}\n" for k, v in state.client_env().items()))


def configure_dvc_remote(state: StackState, repo: Path) -> None:
    """The ``stack`` DVC remote on ``s3://dvc/<repo name>``; its keys go to ``.dvc/config.local`` (git-ignored)."""
    dvc = str(services.BIN / "dvc")
    url = f"s3://{DVC_BUCKET}/{repo.resolve().name}"
    for args in (["remote", "add", "--local", "--force", DVC_REMOTE, url],
                 ["remote", "modify", "--local", DVC_REMOTE, "endpointurl", state.s3_endpoint],
                 ["remote", "modify", "--local", DVC_REMOTE, "region", REGION],
                 ["remote", "modify", "--local", DVC_REMOTE, "access_key_id", state.s3_access_key],
                 ["remote", "modify", "--local", DVC_REMOTE, "secret_access_key", state.s3_secret_key]):
        proc = subprocess.run([dvc, *args], cwd=repo, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"dvc {args[0]} {args[1]} failed in {repo}: {proc.stderr.strip()}")


__all__ = ["DVC_REMOTE", "ROOT", "ServiceStatus", "StackError", "StackState", "configure_dvc_remote", "down",
           "status", "up", "write_env"]
