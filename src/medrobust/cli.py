"""``medrobust <command>``: parse arguments, read params.yaml, call the library. Nothing else.

    medrobust check                 # validate params.yaml first; per-stage params digests for dvc.yaml
    medrobust synthesize            # default data: a synthetic DICOM tree
    medrobust ingest                # any data.source -> validated, de-identified shards
    medrobust advgen                # surrogate + adversarial test sets
    medrobust train                 # the method named in params.yaml
    medrobust pretrain              # RAN's noisy vision-language pretraining, then its heads
    medrobust evaluate              # clean / white-box / transfer robustness, gates
    medrobust register              # MLflow registry, @champion if the gates pass
    medrobust registry list|show|promote|rollback|load   # inspect and steer the registry
    medrobust audit --source DIR OUT...  # search outputs for the sources' patient identifiers
    medrobust quarantine locate REF # the raw source path behind a quarantine.csv reference (local only)
    medrobust publish s3://BUCKET/PREFIX  # the model and its evidence to S3, checksums verified
    medrobust params show [KEY]     # the settings a run uses: params.yaml over the defaults
    medrobust params schema         # the JSON Schema of params.yaml (params.schema.json)
    medrobust pipeline compile      # Kubeflow pipeline + components -> YAML
    medrobust pipeline run-local    # the Kubeflow DAG with kfp.local's SubprocessRunner
    medrobust pipeline submit|schedule|runs --host URL   # a Kubeflow Pipelines server (kfp.Client)
    medrobust compare --methods pgd_at,trades,arfl --folds 5   # patient-grouped k-fold CV, with tests
    medrobust bench <name>          # benchmarks: attacks, ingest, methods, papers, train, two-moon
    medrobust stack up|down|status  # PostgreSQL + S3 + MLflow server on 127.0.0.1, no Docker

Every path is relative to the current folder; ``--params`` names the params file.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medrobust.bench.commands import app as bench_app
from medrobust.bench.commands import compare as compare_command
from medrobust.config import ConfigError
from medrobust.params import Params, load_params
from medrobust.stack.commands import app as stack_app
from medrobust.utils import paths, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adversarially robust medical-image classifiers.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Kubeflow Pipelines: compile, run locally, submit, schedule.")
params_app = typer.Typer(no_args_is_help=True, help="params.yaml: the settings a run uses, its JSON Schema.")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(bench_app, name="bench")
app.add_typer(stack_app, name="stack")
app.add_typer(params_app, name="params")
app.command("compare")(compare_command)
log = logging.getLogger("medrobust.cli")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
PARAMS = Path("params.yaml")


def _params(path: Path) -> Params:
    setup_logging()
    return load_params(path)


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------
@app.command()
def check(params: ParamsOpt = PARAMS,
          out: Path = typer.Option(paths.STAGE_PARAMS, help="what each stage reads: digests and the key settings")) -> None:
    """Validate params.yaml before any stage runs; write the per-stage params digests dvc.yaml depends on."""
    from medrobust.stages import check as stage

    stage.run(_params(params), out)


@app.command()
def synthesize(params: ParamsOpt = PARAMS, out: Path = typer.Option(paths.RAW_SYNTHETIC, help="output folder")) -> None:
    """Write the embedded default dataset: a synthetic mammography-like DICOM tree + labels.csv."""
    from medrobust.stages import synthesize as stage

    stage.run(_params(params), out)


@app.command()
def ingest(
    params: ParamsOpt = PARAMS,
    dicom_dir: Path = typer.Option(None, help="DICOM folder (default: data.dicom_dir)"),
    labels_csv: Path = typer.Option(None, help="labels CSV (default: data.labels_csv)"),
    out: Path = typer.Option(paths.INGESTED, help="output folder"),
) -> None:
    """Decode, de-identify, split by patient, validate (Great Expectations) and shard data.source."""
    from medrobust.stages import ingest as stage

    stage.run(_params(params), out, dicom_dir, labels_csv)


@app.command()
def advgen(
    params: ParamsOpt = PARAMS,
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    out: Path = typer.Option(paths.ADVGEN, help="output folder"),
) -> None:
    """Train (or load) a surrogate and write adversarial versions of the test split."""
    from medrobust.stages import advgen as stage

    stage.run(_params(params), dataset, out)


@app.command()
def train(
    params: ParamsOpt = PARAMS,
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    out: Path = typer.Option(paths.MODEL, help="output folder"),
) -> None:
    """Train with the method named in train.method; log to MLflow."""
    from medrobust.stages import train as stage

    stage.run(_params(params), dataset, out)


@app.command()
def pretrain(
    params: ParamsOpt = PARAMS,
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    out: Path = typer.Option(Path("models/pretrain"), help="output folder"),
) -> None:
    """RAN's upstream stage: a tiny CLIP pre-trained at each noise ratio of pretrain.noise_ratios, then its heads."""
    from medrobust.stages import pretrain as stage

    stage.run(_params(params), dataset, out)


@app.command()
def evaluate(
    params: ParamsOpt = PARAMS,
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    model: Path = typer.Option(paths.MODEL, help="train stage output"),
    advgen: Path = typer.Option(paths.ADVGEN, help="advgen stage output"),
    out: Path = typer.Option(paths.EVALUATION, help="output folder"),
) -> None:
    """Clean, white-box and transfer robustness and the gates; metrics.json, plots, report."""
    from medrobust.stages import evaluate as stage

    stage.run(_params(params), dataset, model, advgen, out)


@app.command()
def register(
    params: ParamsOpt = PARAMS,
    model: Path = typer.Option(paths.MODEL, help="train stage output"),
    evaluation: Path = typer.Option(paths.EVALUATION, help="evaluate stage output"),
    out: Path = typer.Option(paths.DECISION, help="decision JSON"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (its test split feeds the serving check)"),
    report: Path = typer.Option(paths.REPORT, help="the evaluation's report.md, ending with the registry decision"),
    fail_on_reject: bool = typer.Option(False, "--fail-on-reject", help="exit 1 when the version is rejected (CI); a challenger is not"),
) -> None:
    """Register the model; promote to @champion only if it passes the gates."""
    from medrobust.stages import register as stage

    decision = stage.run(_params(params), model, evaluation, out, dataset_dir=dataset, report_path=report)
    if fail_on_reject and decision.status == "rejected":
        logging.getLogger("medrobust").error("version %s rejected: %s", decision.version,
                                             ", ".join(g.name for g in decision.gates if not g.passed))
        raise typer.Exit(1)


quarantine_app = typer.Typer(no_args_is_help=True, help="Find the source file behind a quarantine.csv reference.")
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("locate")
def quarantine_locate(ref: str = typer.Argument(..., help="quarantine.csv's file, e.g. fil-0123456789abcdef.dcm"),
                      params: ParamsOpt = PARAMS, dicom_dir: Path = typer.Option(None, help="default: data.dicom_dir"),
                      labels_csv: Path = typer.Option(None, help="default: data.labels_csv")) -> None:
    """Re-list the source and print the raw path behind REF. It can hold patient identifiers: keep it local."""
    from medrobust.stages import ingest as stage

    p = _params(params)
    found = stage.locate(p, ref, dicom_dir, labels_csv)
    if not found:
        log.error("no item of data.%s has the reference %s (was it ingested with another key or source?)",
                  p.data.source, ref)
        raise typer.Exit(1)
    typer.echo("\n".join(found))


registry_app = typer.Typer(no_args_is_help=True, help="Inspect and steer the MLflow model registry by hand.")
app.add_typer(registry_app, name="registry")


def _registry(params: Path) -> tuple[Any, Any]:
    from mlflow import MlflowClient

    from medrobust.registry import tracking

    p = _params(params)
    tracking.configure(p.mlflow)
    return p, MlflowClient()


@registry_app.command("list")
def registry_list(params: ParamsOpt = PARAMS) -> None:
    """Every version: aliases, status, method, headline accuracy with 95% CI, failed gates."""
    from medrobust.registry import versions

    p, client = _registry(params)
    typer.echo(versions.format_table(versions.list_versions(client, p.register.model_name)))


@registry_app.command("show")
def registry_show(version: str = typer.Argument(..., help="version number, or 'latest'"), params: ParamsOpt = PARAMS) -> None:
    """A version's decision (its gate table) and model card, as Markdown (CI posts it as the job summary)."""
    from medrobust.registry import versions

    p, client = _registry(params)
    if version == "latest":
        version = str(versions.list_versions(client, p.register.model_name)[0]["version"])
    typer.echo(versions.show(client, p.register.model_name, version))


@registry_app.command("promote")
def registry_promote(
    version: str = typer.Argument(..., help="version number"),
    force: bool = typer.Option(False, "--force", help="promote even if a gate fails (needs --reason)"),
    reason: str = typer.Option("", "--reason", help="why; recorded on the version with your user name"),
    params: ParamsOpt = PARAMS,
) -> None:
    """Move @champion to VERSION; the gates are re-checked on its own evaluation unless --force."""
    from medrobust.registry import versions

    p, client = _registry(params)
    versions.promote(client, p.register.model_name, version, p.register, force, reason)
    typer.echo(f"{p.register.model_name}@champion -> version {version}")


@registry_app.command("rollback")
def registry_rollback(params: ParamsOpt = PARAMS) -> None:
    """Move @champion back to the version the current champion replaced."""
    from medrobust.registry import versions

    p, client = _registry(params)
    old, new = versions.rollback(client, p.register.model_name)
    typer.echo(f"{p.register.model_name}@champion: version {old} -> {new}")


@registry_app.command("load")
def registry_load(ref: str = typer.Argument("@champion", help="@alias or a version number"),
                  params: ParamsOpt = PARAMS) -> None:
    """Smoke check: load the model with mlflow.pyfunc in this fresh process and predict on its example."""
    from medrobust.registry import versions

    p, _ = _registry(params)
    name = p.register.model_name
    uri = f"models:/{name}{ref}" if ref.startswith("@") else f"models:/{name}/{ref}"
    result = versions.smoke_load(uri)
    typer.echo(f"{uri}: input {result['input_shape']} -> output {result['output_shape']}, finite")


@app.command()
def audit(
    outputs: list[Path] = typer.Argument(..., help="output folders/files to search (stage outputs, mlflow.db, logs)"),
    source: list[Path] = typer.Option(..., "--source", help="input data (DICOM folders, labels CSV); repeatable"),
    report: Path = typer.Option(None, help="also write the JSON report here (kinds and hashes, never values)"),
) -> None:
    """Search outputs for the sources' patient/instance identifiers; exit 1 if any is found."""
    from medrobust.data.audit import audit as run_audit
    from medrobust.utils import write_json

    setup_logging()
    try:
        result = run_audit(source, outputs)
    except ValueError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    if report is not None:
        write_json(report, result)
    log.info("audit: %d findings in %d files", len(result["findings"]), result["files_scanned"])
    if result["findings"]:
        raise typer.Exit(1)


@app.command()
def publish(to: str = typer.Argument(..., help="s3://<bucket>/<prefix>"),
            paths_: list[Path] = typer.Argument(None, metavar="PATHS", help="files and folders (default: the model, "
                                                "the evaluation, the report and the decision)"),
            endpoint_url: str = typer.Option("", envvar="AWS_ENDPOINT_URL_S3", help="empty: AWS"),
            region: str = typer.Option("us-east-1", envvar="AWS_DEFAULT_REGION")) -> None:
    """Upload a model and its evidence to S3, each file's checksum verified, then a manifest.json naming them."""
    from medrobust.data import storage

    setup_logging()
    cfg = storage.StorageConfig(endpoint_url=endpoint_url, region=region)
    chosen = paths_ or [paths.MODEL, paths.EVALUATION, paths.REPORT, paths.DECISION]
    try:
        manifest = storage.publish(storage.client(cfg), cfg, chosen, to)
    except storage.StorageError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    log.info("published %d files to %s (manifest.json last)", len(manifest["files"]), manifest["url"])


@params_app.command("show")
def params_show(key: str = typer.Argument("", help="a dotted key, e.g. train.methods.pgd_at; empty: everything"),
                params: ParamsOpt = PARAMS,
                defaults: bool = typer.Option(False, "--defaults", help="the defaults, ignoring --params")) -> None:
    """Print the settings a run uses (params.yaml merged over the defaults) as YAML, or one key of them."""
    import yaml

    value: Any = (Params() if defaults else _params(params)).model_dump(mode="json")
    for part in [p for p in key.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            allowed = ", ".join(sorted(value)) if isinstance(value, dict) else "none (a value)"
            raise ConfigError(f"no setting {key!r}: {part!r} is not a key here; allowed keys: {allowed}")
        value = value[part]
    typer.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n").removesuffix("\n..."))


@params_app.command("schema")
def params_schema(out: Path = typer.Option(paths.PARAMS_SCHEMA, help="where to write the JSON Schema")) -> None:
    """Write the JSON Schema of params.yaml (editors autocomplete and check params.yaml with it)."""
    from medrobust.params import schema_text

    setup_logging()
    out.write_text(schema_text())
    log.info("params schema -> %s", out)


# --------------------------------------------------------------------------------------------------
# Kubeflow
# --------------------------------------------------------------------------------------------------
@pipeline_app.command("compile")
def pipeline_compile(
    params: ParamsOpt = PARAMS,
    out: Path = typer.Option(paths.PIPELINE_YAML, help="compiled pipeline YAML"),
    components: Path = typer.Option(paths.COMPONENTS, help="folder for components/<stage>/component.yaml"),
) -> None:
    """Compile the Kubeflow pipeline for --params, and every stage's reusable component."""
    from medrobust.pipelines.compile import compile_components, compile_pipeline

    setup_logging()
    compile_pipeline(out, params)
    written = compile_components(components)
    log.info("compiled pipeline -> %s; %d components -> %s", out, len(written), components)


@pipeline_app.command("run-local")
def pipeline_run_local(
    params: ParamsOpt = PARAMS,
    pipeline_root: Path = typer.Option(paths.KFP_LOCAL_ROOT, help="where kfp.local keeps artifacts"),
) -> None:
    """Run the whole DAG on this machine with kfp.local's SubprocessRunner."""
    from medrobust.pipelines.local import run_local

    run_dir = run_local(_params(params), params, pipeline_root)
    log.info("kfp.local run finished: artifacts in %s", run_dir)


HostOpt = Annotated[str, typer.Option("--host", envvar="KFP_HOST", help="the KFP API, e.g. https://kfp.example.org "
                                                                     "(token: $KFP_TOKEN)")]
PackageOpt = Annotated[Path, typer.Option("--package", help="the compiled pipeline (medrobust pipeline compile)")]
ExperimentOpt = Annotated[str, typer.Option("--experiment", help="the KFP experiment")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", help="the Kubeflow profile's namespace (multi-user)")]


@pipeline_app.command("submit")
def pipeline_submit(host: HostOpt, params: ParamsOpt = PARAMS, package: PackageOpt = paths.PIPELINE_YAML,
                    experiment: ExperimentOpt = "medrobust", namespace: NamespaceOpt = "",
                    run_name: str = typer.Option("", help="the run's name (default: package and time)"),
                    wait: bool = typer.Option(False, "--wait", help="wait until the run finishes; exit 1 unless it succeeded"),
                    timeout: int = typer.Option(6 * 3600, help="seconds --wait waits"),
                    poll: float = typer.Option(15.0, help="seconds between state checks with --wait")) -> None:
    """Submit one run of the compiled pipeline, with --params' text as its params_yaml input."""
    from medrobust.pipelines import remote

    _params(params)  # refuse invalid params here, not on the cluster
    info = remote.submit(host, package, params.read_text(), experiment, run_name or None, namespace or None,
                         wait=wait, timeout_s=timeout, poll_s=poll)
    typer.echo(f"{info.run_id} {info.state}")
    if wait and not info.succeeded:
        raise typer.Exit(1)


@pipeline_app.command("schedule")
def pipeline_schedule(host: HostOpt, cron: str = typer.Option(..., help="6 fields, seconds first: '0 0 2 * * *'"),
                      params: ParamsOpt = PARAMS, package: PackageOpt = paths.PIPELINE_YAML,
                      experiment: ExperimentOpt = "medrobust", namespace: NamespaceOpt = "",
                      name: str = typer.Option("medrobust-nightly", help="the recurring run's name"),
                      max_concurrency: int = typer.Option(1, min=1, help="runs of it at once")) -> None:
    """Create a recurring run of the compiled pipeline on a cron schedule."""
    from medrobust.pipelines import remote

    _params(params)
    typer.echo(remote.schedule(host, package, params.read_text(), experiment, name, cron, max_concurrency,
                               namespace or None))


@pipeline_app.command("runs")
def pipeline_runs(host: HostOpt, experiment: ExperimentOpt = "", namespace: NamespaceOpt = "",
                  limit: int = typer.Option(20, min=1, help="how many, newest first")) -> None:
    """List the latest runs and their states."""
    from medrobust.pipelines import remote

    setup_logging()
    for r in remote.list_runs(host, experiment or None, namespace or None, limit):
        typer.echo(f"{r.run_id}  {r.state:<10} {r.created_at:<26} {r.name}")


def main() -> None:
    """Entry point: known user errors exit 2 with one clear message, not a traceback."""
    from medrobust.pipelines.remote import RemoteError
    from medrobust.registry.champion import LeaseError
    from medrobust.registry.evidence import EvidenceError
    from medrobust.registry.gates import StaleEvaluationError
    from medrobust.registry.versions import RegistryError
    from medrobust.stages.ingest import IngestError, IngestValidationError

    try:
        app()
    except (ConfigError, EvidenceError, StaleEvaluationError, RegistryError, LeaseError, IngestError,
            IngestValidationError, RemoteError, FileNotFoundError) as exc:
        logging.getLogger("medrobust").error("%s", exc)
        sys.exit(2)
    except Exception as exc:
        from medrobust.registry.tracking import unreachable

        if (message := unreachable(exc)) is None:
            raise
        logging.getLogger("medrobust").error("%s", message)
        sys.exit(2)


if __name__ == "__main__":
    main()
