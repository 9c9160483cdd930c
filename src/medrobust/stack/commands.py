"""``medrobust stack up|down|status``: the local production-like stack (thin shell over :mod:`medrobust.stack`)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from medrobust.stack import ROOT, StackError, down, status, up
from medrobust.utils import setup_logging

app = typer.Typer(no_args_is_help=True, help="A local production-like stack: PostgreSQL + S3 + MLflow server.")
log = logging.getLogger("medrobust.stack")
RootOpt = typer.Option(ROOT, "--root", help="the stack's folder: state, credentials, data, logs")


@app.command("up")
def stack_up(root: Path = RootOpt,
             dvc_remote: bool = typer.Option(True, help="add the 'stack' DVC remote to .dvc/config.local")) -> None:
    """Start PostgreSQL, SeaweedFS S3 and the MLflow server (what already runs is left alone)."""
    setup_logging()
    try:
        state = up(root, Path(".") if dvc_remote else None)
    except StackError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    env = Path(state.root) / "env"
    typer.echo(f"MLflow   {state.tracking_uri}   (user {state.mlflow_user}; password in {env})\n"
               f"S3       {state.s3_endpoint}   (buckets mlflow-artifacts, dvc)\n"
               f"Postgres 127.0.0.1:{state.pg_port}   (database mlflow)\n\n"
               f"  source {env}      # then dvc repro, mlflow ui in the browser, dvc push -r stack")


@app.command("down")
def stack_down(root: Path = RootOpt,
               purge: bool = typer.Option(False, help="also delete the stack's runs, models, objects and credentials")) -> None:
    """Stop the three servers; no process and no socket is left behind."""
    setup_logging()
    stopped = down(root, purge=purge)
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}" + (" (data deleted)" if purge else ""))


@app.command("status")
def stack_status(root: Path = RootOpt) -> None:
    """Each server's PID, port and state; exits 1 unless all three run."""
    rows = status(root)
    if not rows:
        typer.echo(f"no stack in {root}: medrobust stack up")
        raise typer.Exit(1)
    for s in rows:
        state = "running" if s.running and s.listening else "starting" if s.running else "stopped"
        typer.echo(f"{s.name:<9}{state:<10}pid {s.pid or '-':<8}port {s.port}")
    if not all(s.running and s.listening for s in rows):
        raise typer.Exit(1)
