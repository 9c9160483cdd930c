"""``medrobust bench <name>``: benchmarks that print ratios measured side by side in one run (thin shells)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from medrobust.params import Params, load_params
from medrobust.utils import paths, setup_logging

app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios measured within one run.")
ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
PARAMS = Path("params.yaml")
log = logging.getLogger("medrobust.cli")


def _params(path: Path) -> Params:
    setup_logging()
    return load_params(path)


def _methods(text: str) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] or None


@app.command("attacks")
def bench_attacks(
    params: ParamsOpt = PARAMS,
    repeats: int = typer.Option(3, help="timed rounds per attack (median kept)"),
    n_images: int = typer.Option(64, help="batch size: the same batch for every attack"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (built if missing)"),
    out: Path = typer.Option(None, help="also write <out>.json and <out>.md"),
) -> None:
    """Attack throughput vs torchattacks; robust evaluation with and without early stopping."""
    from medrobust.bench import attacks as bench
    from medrobust.bench.report import command_line, publish

    report = bench.bench_attacks(_params(params), repeats=repeats, dataset_dir=dataset, n_images=n_images)
    if out is not None:
        command = command_line("attacks", {"repeats": repeats, "n_images": n_images, "out": out},
                               {"repeats": 3, "n_images": 64})
        publish(out, report, bench.to_markdown(report, command), command)


@app.command("autoattack")
def bench_autoattack(
    params: ParamsOpt = PARAMS,
    n_images: int = typer.Option(500, help="digits test images attacked"),
    eps: str = typer.Option("0.075,0.1", help="comma-separated L∞ budgets"),
    repeats: int = typer.Option(3, help="alternating timed rounds per ε (median kept)"),
    out: Path = typer.Option(Path("benchmarks/autoattack"), help="writes <out>.json and <out>.md"),
) -> None:
    """Our AutoAttack ensemble vs torchattacks' AutoAttack(version="standard") on scikit-learn's digits."""
    from medrobust.bench import autoattack as bench
    from medrobust.bench.report import command_line, publish

    try:
        epsilons = tuple(float(e) for e in eps.split(",") if e.strip())
    except ValueError:
        raise typer.BadParameter(f"--eps must be comma-separated numbers, got {eps!r}") from None
    try:
        report = bench.bench_autoattack(seed=_params(params).seed, n_images=n_images, epsilons=epsilons,
                                        repeats=repeats)
    except (RuntimeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    command = command_line("autoattack", {"n_images": n_images, "eps": eps, "repeats": repeats, "out": out},
                           {"n_images": 500, "eps": "0.075,0.1", "repeats": 3, "out": Path("benchmarks/autoattack")})
    markdown = bench.to_markdown(report, command)
    publish(out, report, markdown, command)
    typer.echo(markdown)


@app.command("certify")
def bench_certify(
    params: ParamsOpt = PARAMS,
    methods: str = typer.Option("standard,pgd_at,gaussian_noise,smooth_adv", help="comma-separated training methods"),
    sigma: float = typer.Option(0.25, help="noise level: the noise methods' training and the certificates"),
    n: int = typer.Option(2000, help="samples that bound the class's probability (n0 = 100 select it)"),
    epochs: int = typer.Option(0, help="epochs per method (0: train.epochs)"),
    repeats: int = typer.Option(3, help="interleaved speed rounds (median kept)"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (built if missing)"),
    out: Path = typer.Option(Path("benchmarks/certify"), help="writes <out>.json and <out>.md"),
) -> None:
    """Certified accuracy (randomized smoothing) of noise-trained vs other models; samples/s vs a forward pass and ART."""
    from medrobust.bench import certify as bench
    from medrobust.bench.report import command_line, publish

    try:
        report = bench.bench_certify(_params(params), dataset_dir=dataset, methods=tuple(_methods(methods) or ()),
                                     sigma=sigma, n=n, epochs=epochs or None, repeats=repeats)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise typer.BadParameter(str(exc)) from None
    command = command_line("certify", {"methods": methods, "sigma": sigma, "n": n, "epochs": epochs, "repeats": repeats,
                                       "out": out},
                           {"methods": "standard,pgd_at,gaussian_noise,smooth_adv", "sigma": 0.25, "n": 2000,
                            "epochs": 0, "repeats": 3, "out": Path("benchmarks/certify")})
    markdown = bench.to_markdown(report, command)
    publish(out, report, markdown, command)
    typer.echo(markdown)


@app.command("train")
def bench_train(
    params: ParamsOpt = PARAMS,
    methods: str = typer.Option("", help="comma-separated methods (default: all registered)"),
    n_batches: int = typer.Option(6, help="batches per timed epoch"),
    repeats: int = typer.Option(3, help="timed rounds (median kept)"),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)"),
    out: Path = typer.Option(None, help="also write <out>.json and <out>.md (e.g. benchmarks/train_cost)"),
) -> None:
    """Epoch time of every training method as a ratio to standard training, in one run."""
    from medrobust.bench import train_cost as bench
    from medrobust.bench.report import command_line, publish

    report = bench.bench_train(_params(params), methods=_methods(methods), n_batches=n_batches, repeats=repeats,
                               threads=threads or None)
    if out is not None:
        command = command_line("train", {"methods": methods, "n_batches": n_batches, "repeats": repeats,
                                         "threads": threads, "out": out}, {"n_batches": 6, "repeats": 3, "threads": 0})
        publish(out, report, bench.to_markdown(report, command), command)


@app.command("papers")
def bench_papers(
    params: ParamsOpt = PARAMS,
    paper: str = typer.Option("", help="comma-separated sections (built: ran); empty: every built section"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (built if missing)"),
    out: Path = typer.Option(Path("benchmarks"), help="writes <out>/claims/<paper>.json and <out>/papers.md"),
) -> None:
    """Each seed paper's own protocol on the built-in data, with its claims and a verdict on each."""
    from medrobust.bench import papers as bench
    from medrobust.bench.report import command_line

    p = _params(params)
    try:
        names = bench.check_papers(_methods(paper))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--paper") from exc
    command = command_line("papers", {"paper": paper, "out": out}, {"out": Path("benchmarks")})
    bench.bench_papers(p, names, dataset_dir=dataset, out_dir=out, command=command)


@app.command("methods")
def bench_methods(
    params: ParamsOpt = PARAMS,
    methods: str = typer.Option("", help="comma-separated methods (default: all registered)"),
    epochs: int = typer.Option(0, help="epochs per method (0: train.epochs)"),
    seeds: int = typer.Option(3, help="training seeds per method"),
    jobs: int = typer.Option(1, help="seeds in parallel, one process each (the numbers do not depend on it)"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested default dataset (built if missing)"),
    out: Path = typer.Option(Path("benchmarks/methods"), help="writes <out>.json and <out>.md"),
) -> None:
    """Every training method over seeds: shared L∞ suite and own threat model, AutoAttack, masking checks, CIs."""
    from medrobust.bench import methods as bench
    from medrobust.bench.methods_report import to_markdown
    from medrobust.bench.report import command_line, publish

    start = time.perf_counter()
    report = bench.bench_methods(_params(params), methods=_methods(methods), dataset_dir=dataset,
                                 epochs=epochs or None, seeds=seeds, jobs=jobs)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    command = command_line("methods", {"methods": methods, "epochs": epochs, "seeds": seeds, "jobs": jobs, "out": out},
                           {"epochs": 0, "seeds": 3, "jobs": 1, "out": Path("benchmarks/methods")})
    minutes = report["wall_seconds"] / 60
    where = f"{jobs} processes × {report['threads']} thread(s)" if jobs > 1 else f"{report['threads']} threads"
    publish(out, report, to_markdown(report, command).replace(
        f"Command: `{command}`", f"Command: `{command}` — wall time {minutes:.0f} min on {where}", 1), command)


@app.command("ingest")
def bench_ingest(
    params: ParamsOpt = PARAMS,
    n_files: int = typer.Option(1000, help="synthetic DICOM files to write and ingest"),
    repeats: int = typer.Option(3, help="alternating repeats; the best of each side is reported"),
    stage: bool = typer.Option(True, help="also time the whole stage (GX validation, Data Docs, shards)"),
    out: Path = typer.Option(Path("benchmarks/ingest"), help="writes <out>.json and <out>.md"),
) -> None:
    """Ingest files/s as a ratio to bare pydicom decoding of the same files (goal >= 0.8)."""
    from medrobust.bench import ingest as bench
    from medrobust.bench.report import command_line, publish

    report = bench.bench_ingest(_params(params), n_files=n_files, repeats=repeats, stage=stage)
    command = command_line("ingest", {"n_files": n_files, "repeats": repeats, "stage": stage, "out": out},
                           {"stage": True, "out": Path("benchmarks/ingest")})
    markdown = bench.to_markdown(report, command)
    publish(out, report, markdown, command)
    typer.echo(markdown)


@app.command("two-moon")
def bench_two_moon(
    seeds: int = typer.Option(0, help="number of seeds 0..n-1 (0: 5, the paper's)"),
    epochs: int = typer.Option(0, help="epochs per run (0: the benchmark's default)"),
    batch_size: int = typer.Option(0, help="batch size (0: the benchmark's default)"),
    lr: float = typer.Option(0.0, help="Adam learning rate (0: the benchmark's default)"),
    n_train: int = typer.Option(0, help="training points (0: 10,000, the paper's)"),
    out: Path = typer.Option(Path("benchmarks/two_moon"), help="writes <out>.json and <out>.md"),
) -> None:
    """ARFL's two-moon experiment (Table 1): settings A-H, clean and FGSM accuracy over seeds."""
    from medrobust.bench import two_moon as bench
    from medrobust.bench.report import command_line

    setup_logging()
    options = {"seeds": seeds, "epochs": epochs, "batch_size": batch_size, "lr": lr, "n_train": n_train}
    command = command_line("two-moon", {**options, "out": out}, {**dict.fromkeys(options, 0),
                                                                  "out": Path("benchmarks/two_moon")})
    bench.run(out, command, bench.config_from_options(**options))


def compare(
    params: ParamsOpt = PARAMS,
    methods: str = typer.Option(..., help="comma-separated training methods, e.g. pgd_at,trades,arfl"),
    folds: int = typer.Option(5, help="patient-grouped folds (GroupKFold on the patient pseudonyms)"),
    epochs: int = typer.Option(0, help="epochs per method and fold (0: train.epochs)"),
    dataset: Path = typer.Option(paths.INGESTED, help="ingested dataset (the built-in one is made if missing)"),
    out: Path = typer.Option(Path("benchmarks/compare"), help="writes <out>.json, <out>.md and <out>.png"),
) -> None:
    """Cross-validate training methods on the same patient folds: mean ± sd, Wilcoxon and Mann–Whitney tests.

    ``medrobust compare`` (a top-level command, registered by :mod:`medrobust.cli`).
    """
    from medrobust.bench import compare as bench
    from medrobust.bench.compare_report import box_plot, to_markdown
    from medrobust.bench.report import command_line, publish

    report = bench.compare_methods(_params(params), _methods(methods) or [], n_folds=folds, dataset_dir=dataset,
                                   epochs=epochs or None)
    command = command_line("compare", {"methods": methods, "folds": folds, "epochs": epochs, "out": out},
                           {"epochs": 0, "out": Path("benchmarks/compare")}, program="medrobust")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = box_plot(report, out.with_suffix(".png"))
    publish(out, report, to_markdown(report, command, figure.name), command)
    log.info("compare: %s", out.with_suffix(".md"))
