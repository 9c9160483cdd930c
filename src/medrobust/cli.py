"""``medrobust <stage>``: parse arguments, read params.yaml, call ``stages.<stage>.run``. Nothing else.

    medrobust synthesize            # default data: a synthetic DICOM tree
    medrobust ingest                # DICOM folder + labels CSV -> validated shards
    medrobust advgen                # surrogate + adversarial test sets
    medrobust train                 # the method named in params.yaml
    medrobust evaluate              # clean / white-box / transfer robustness, gates
    medrobust register              # MLflow registry, @champion if the gates pass
    medrobust audit --source DIR OUT...  # search outputs for the sources' patient identifiers
    medrobust pipeline compile      # Kubeflow pipeline -> YAML
    medrobust pipeline run-local    # the Kubeflow DAG with kfp.local's SubprocessRunner
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from medrobust import paths
from medrobust.config import ConfigError, Params, load_params
from medrobust.utils import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Adversarially robust medical-image classifiers.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Kubeflow Pipelines: compile and run the DAG.")
app.add_typer(pipeline_app, name="pipeline")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios measured within one run.")
app.add_typer(bench_app, name="bench")
log = logging.getLogger("medrobust.cli")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]


def _params(path: Path) -> Params:
    setup_logging()
    for noisy in ("great_expectations", "alembic", "mlflow", "urllib3", "matplotlib", "kfp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_params(path)


@app.command()
def synthesize(
    params: ParamsOpt = Path("params.yaml"), out: Path = typer.Option(paths.RAW_SYNTHETIC, help="output folder")
) -> None:
    """Write the embedded default dataset: a synthetic mammography-like DICOM tree + labels.csv."""
    from medrobust.stages import synthesize as stage

    stage.run(_params(params), out)


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    dicom_dir: Path = typer.Option(None, help="DICOM folder (default: data.dicom_dir)"),
    labels_csv: Path = typer.Option(None, help="labels CSV (default: data.labels_csv)"),
    out: Path = typer.Option(paths.INGESTED, help="output folder"),
) -> None:
    """Decode, de-identify, split by patient, validate (Great Expectations) and shard a DICOM folder."""
    from medrobust.stages import ingest as stage

    stage.run(_params(params), out, dicom_dir, labels_csv)


@app.command()
def advgen(
    params: ParamsOpt = Path("params.yaml"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    out: Path = typer.Option(paths.ADVGEN, help="output folder"),
) -> None:
    """Train (or load) a surrogate and write adversarial versions of the test split."""
    from medrobust.stages import advgen as stage

    stage.run(_params(params), dataset, out)


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    out: Path = typer.Option(paths.MODEL, help="output folder"),
) -> None:
    """Train with the method named in train.method; log to MLflow."""
    from medrobust.stages import train as stage

    stage.run(_params(params), dataset, out)


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset"),
    model: Path = typer.Option(paths.MODEL, help="train stage output"),
    advgen: Path = typer.Option(paths.ADVGEN, help="advgen stage output"),
    out: Path = typer.Option(paths.EVALUATION, help="output folder"),
) -> None:
    """Clean, white-box and transfer robustness; metrics.json, plot, report."""
    from medrobust.stages import evaluate as stage

    stage.run(_params(params), dataset, model, advgen, out)


@app.command()
def register(
    params: ParamsOpt = Path("params.yaml"),
    model: Path = typer.Option(paths.MODEL, help="train stage output"),
    evaluation: Path = typer.Option(paths.EVALUATION, help="evaluate stage output"),
    out: Path = typer.Option(paths.DECISION, help="decision JSON"),
) -> None:
    """Register the model; promote to @champion only if it passes the gates."""
    from medrobust.stages import register as stage

    stage.run(_params(params), model, evaluation, out)


@app.command()
def audit(
    outputs: list[Path] = typer.Argument(..., help="output folders/files to search (stage outputs, mlflow.db, logs)"),
    source: list[Path] = typer.Option(..., "--source", help="input data (DICOM folders, labels CSV); repeatable"),
    report: Path = typer.Option(None, help="also write the JSON report here (kinds and hashes, never values)"),
) -> None:
    """Search outputs for the sources' patient/instance identifiers; exit 1 if any is found."""
    from medrobust.audit import audit as run_audit
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


@pipeline_app.command("compile")
def pipeline_compile(
    out: Path = typer.Option(paths.PIPELINE_YAML, help="compiled pipeline YAML"),
) -> None:
    """Compile the Kubeflow pipeline to YAML (the committed snapshot lives at pipelines/)."""
    from medrobust.pipelines.dag import compile_pipeline

    setup_logging()
    compile_pipeline(out)
    log.info("compiled pipeline -> %s", out)


@pipeline_app.command("run-local")
def pipeline_run_local(
    params: ParamsOpt = Path("params.yaml"),
    pipeline_root: Path = typer.Option(paths.KFP_LOCAL_ROOT, help="where kfp.local keeps artifacts"),
) -> None:
    """Run the whole DAG on this machine with kfp.local's SubprocessRunner."""
    from medrobust.pipelines.local import run_local

    p = _params(params)
    run_dir = run_local(p, params, pipeline_root)
    log.info("kfp.local run finished: artifacts in %s", run_dir)


@bench_app.command("attacks")
def bench_attacks(
    params: ParamsOpt = Path("params.yaml"),
    repeats: int = typer.Option(3, help="timed rounds per attack (median kept)"),
    n_images: int = typer.Option(64, help="batch size: the same batch for every attack"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (built if missing)"),
    out: Path = typer.Option(None, help="also write the numbers as JSON"),
) -> None:
    """Attack throughput vs torchattacks; robust evaluation with and without early stopping."""
    from medrobust.bench import bench_attacks as run_bench
    from medrobust.utils import write_json

    report = run_bench(_params(params), repeats=repeats, dataset_dir=dataset, n_images=n_images)
    if out is not None:
        write_json(out, report)


@bench_app.command("train")
def bench_train(
    params: ParamsOpt = Path("params.yaml"),
    methods: str = typer.Option("", help="comma-separated methods (default: all registered)"),
    n_batches: int = typer.Option(6, help="batches per timed epoch"),
    repeats: int = typer.Option(3, help="timed rounds (median kept)"),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)"),
    out: Path = typer.Option(None, help="also write <out>.json and <out>.md (e.g. benchmarks/train_cost)"),
) -> None:
    """Epoch time of every training method as a ratio to standard training, in one run."""
    from medrobust.bench_train import bench_train as run_bench
    from medrobust.bench_train import to_markdown
    from medrobust.utils import write_json

    names = [m.strip() for m in methods.split(",") if m.strip()] or None
    report = run_bench(_params(params), methods=names, n_batches=n_batches, repeats=repeats, threads=threads or None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out.with_suffix(".json"), report)
        command = "medrobust bench train" + (f" --methods {methods}" if methods else "") + (
            f" --n-batches {n_batches}" if n_batches != 6 else "") + (f" --repeats {repeats}" if repeats != 3 else "")
        out.with_suffix(".md").write_text(to_markdown(report, command + f" --out {out}"))


@bench_app.command("methods")
def bench_methods(
    params: ParamsOpt = Path("params.yaml"),
    methods: str = typer.Option("", help="comma-separated methods (default: all registered)"),
    epochs: int = typer.Option(0, help="epochs per method (0: train.epochs)"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested default dataset (built if missing)"),
    out: Path = typer.Option(Path("benchmarks/methods"), help="writes <out>.json and <out>.md"),
) -> None:
    """Clean and PGD robust accuracy of every training method on the default data, same budget."""
    from medrobust.bench_methods import bench_methods as run_bench
    from medrobust.bench_methods import to_markdown
    from medrobust.utils import write_json

    names = [m.strip() for m in methods.split(",") if m.strip()] or None
    report = run_bench(_params(params), methods=names, dataset_dir=dataset, epochs=epochs or None)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), report)
    command = "medrobust bench methods" + (f" --methods {methods}" if methods else "") + (
        f" --epochs {epochs}" if epochs else "")
    out.with_suffix(".md").write_text(to_markdown(report, command))


@bench_app.command("ingest")
def bench_ingest(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml (data.image_size, data.workers)"),
    n_files: int = typer.Option(1000, help="synthetic DICOM files to write and ingest"),
    repeats: int = typer.Option(3, help="alternating repeats; the best of each side is reported"),
    stage: bool = typer.Option(True, help="also time the whole stage (GX validation, Data Docs, shards)"),
    out: Path = typer.Option(Path("benchmarks/ingest"), help="writes <out>.json and <out>.md"),
) -> None:
    """Ingest files/s as a ratio to bare pydicom decoding of the same files (goal >= 0.8)."""
    from medrobust.bench_ingest import bench_ingest as run_bench
    from medrobust.bench_ingest import to_markdown

    from medrobust.utils import write_json

    report = run_bench(_params(params), n_files=n_files, repeats=repeats, stage=stage)
    command = f"medrobust bench ingest --n-files {n_files} --repeats {repeats}"
    md = to_markdown(report, command)
    write_json(out.with_suffix(".json"), {"command": command, **report})
    out.with_suffix(".md").write_text(md)
    typer.echo(md)


@bench_app.command("two-moon")
def bench_two_moon(
    seeds: int = typer.Option(0, help="number of seeds 0..n-1 (0: 5, the paper's)"),
    epochs: int = typer.Option(0, help="epochs per run (0: the benchmark's default)"),
    batch_size: int = typer.Option(0, help="batch size (0: the benchmark's default)"),
    lr: float = typer.Option(0.0, help="Adam learning rate (0: the benchmark's default)"),
    n_train: int = typer.Option(0, help="training points (0: 10,000, the paper's)"),
    out: Path = typer.Option(Path("benchmarks/two_moon"), help="writes <out>.json and <out>.md"),
) -> None:
    """ARFL's two-moon experiment (Table 1): settings A-H, clean and FGSM accuracy over seeds."""
    from medrobust.bench_two_moon import run_from_cli

    setup_logging()
    run_from_cli(out, seeds=seeds, epochs=epochs, batch_size=batch_size, lr=lr, n_train=n_train)


def main() -> None:
    """Entry point: known user errors exit 2 with one clear message, not a traceback."""
    from medrobust.stages.ingest import IngestError, IngestValidationError

    try:
        app()
    except (ConfigError, IngestError, IngestValidationError, FileNotFoundError) as exc:
        logging.getLogger("medrobust").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
