"""Great Expectations (1.x) checks on the ingest manifest, per source, with Data Docs.

Three tables are validated, each with its own suite named ``medrobust_<source>_<table>``, so every
rule is a plain GX expectation:

* ``images`` — one row per image: no nulls, labels in the allowed set, pixel range in [0, 1],
  known splits, unique image ids; plus the facts of the source (below);
* ``patients`` — one row per pseudonymous patient (for ``ham10000``: per lesion, the source's
  grouping): the number of splits it appears in is exactly 1 (no patient leakage);
* ``class_balance`` — one row per (split, class): the class fraction lies within the bounds from
  params.yaml (``validation:``), and every split has enough images.

Per-source expectations on ``images`` (:func:`_source_rules`), chosen by the source's registry entry
(:data:`~medrobust.data.sources.SOURCES`, e.g. ``SOURCES.cfg("cmmd")``):

=========================================  ======================================================
registry entry                             expectations
=========================================  ======================================================
every source but ``vectors=True``          ``height`` and ``width`` equal ``data.image_size``
``dicom="all"`` (synthetic, pacs, cmmd)    every row comes from a DICOM object (``is_dicom``)
``dicom="all"`` or ``"some"`` (the above   ``modality``, ``photometric``, ``source_rows`` and
plus dicom_folder and s3)                  ``source_columns`` not null; ``photometric`` one the
                                           decoder handles; ``source_rows``/``source_columns`` at
                                           least :data:`~medrobust.data.dicom.MIN_SIDE`
``sided=True`` (cmmd)                      ``laterality`` (ImageLaterality) in {L, R}
``vectors=True`` (two_moons)               ``height`` 1, ``width`` 2 (a feature vector)
=========================================  ======================================================

``dicom="some"`` sources (dicom_folder, s3) may also hold PNG/JPEG files, which have no DICOM header: their DICOM
expectations are restricted (a GX row condition) to rows with at least one DICOM header fact,
flagged by the derived column ``is_dicom``. Ingest always writes the base fact columns
(``modality``, ``photometric``, ``bits_stored``, ``source_rows``, ``source_columns``; empty when an
image lacks the fact) but adds the others (``laterality``, ``frames``...) only when some image has
them; an expectation whose column is not in the manifest is *skipped*, and the skip is recorded in
:attr:`ValidationReport.checks` (``skipped: True``) so it shows in ``validation.md``.

With ``docs_dir``, the same suites run in a throw-away GX *file* context (a temporary directory,
never the repository or ``~``) and its Data Docs site (``index.html``, ``validations/``,
``expectations/``, ``static/``) is copied to ``docs_dir``. The pages load their CSS/JS from CDNs,
so offline they render unstyled but readable. They list sample unexpected values
(``result_format="SUMMARY"``): the manifest holds only keyed-hash pseudonyms, labels and technical
facts, so no patient identifier can reach them.

:func:`validate_manifest` returns a :class:`ValidationReport`; the ingest stage writes it as JSON
(the full GX results) and markdown (a readable summary) and stops when it fails.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from pydantic import Field, model_validator

from medrobust.config import StrictModel
from medrobust.data.dicom import COLOR, MIN_SIDE
from medrobust.data.sources import SOURCES

log = logging.getLogger(__name__)

TABLES = ("images", "patients", "class_balance")
#: photometric interpretations the decoder maps to grey levels (anything else is quarantined)
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", *sorted(COLOR))
#: manifest columns holding DICOM header facts (ingest's FACT_COLUMNS values that mark a DICOM row)
DICOM_FACT_COLUMNS = ("modality", "photometric", "bits_stored", "source_rows", "source_columns", "transfer_syntax")
_TEXT_FACTS = ("modality", "photometric", "laterality")
_NUMERIC_FACTS = ("bits_stored", "source_rows", "source_columns")


class ValidationConfig(StrictModel):
    """``validation``: the Great Expectations thresholds for the ingest manifest."""

    min_class_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_class_fraction: float = Field(0.8, ge=0.0, le=1.0)
    max_quarantine_fraction: float = Field(0.2, ge=0.0, le=1.0)
    min_images_per_split: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _min_below_max(self) -> ValidationConfig:
        if self.min_class_fraction > self.max_class_fraction:
            raise ValueError("min_class_fraction must be <= max_class_fraction")
        return self


def _dicom_items(source: str) -> str:
    """``all``, ``some`` or ``none``: whether the source's items are DICOM objects (its registry entry)."""
    return str(SOURCES.cfg(source).get("dicom", "none"))


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_manifest`.

    Attributes:
        success: every expectation passed.
        checks: one dict per expectation: ``table``, ``expectation``, ``column``, ``success``,
            ``details``; skipped expectations also have ``skipped: True``.
        raw: the full GX validation results per table (JSON-ready).
        source: the ingest source the suites were built for.
    """

    success: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The checks that failed."""
        return [c for c in self.checks if not c["success"]]

    def add_failure(self, table: str, expectation: str, details: str) -> None:
        """Record a failed check made outside Great Expectations (e.g. the quarantine fraction).

        Sets :attr:`success` to False.

        Args:
            table: the table the check is about, for the report.
            expectation: the check's name.
            details: why it failed (no identifier).
        """
        self.success = False
        self.checks.append({"table": table, "expectation": expectation, "column": None, "success": False,
                            "details": details})

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """The expectations skipped because their column is not in the manifest."""
        return [c for c in self.checks if c.get("skipped")]

    def to_markdown(self) -> str:
        """``validation.md``: one table row per check.

        Returns:
            Markdown: a title saying PASSED or FAILED, then a table of table, expectation, column, result
            (ok, skipped or **FAILED**) and details.
        """
        title = f"# Ingest validation{f' ({self.source})' if self.source else ''}: "
        lines = [
            title + ("PASSED" if self.success else "FAILED"),
            "",
            "| table | expectation | column | result | details |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            result = "skipped" if c.get("skipped") else "ok" if c["success"] else "**FAILED**"
            lines.append(
                f"| {c['table']} | {c['expectation']} | {c.get('column') or ''} | {result} | {c.get('details', '')} |"
            )
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Rule:
    """A per-source expectation on ``images`` and the columns it needs."""

    columns: tuple[str, ...]
    make: Callable[[], Any]


def _images_frame(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    """The ``images`` table: the manifest with its header-fact columns made comparable.

    Ingest fills a fact an image lacks with ``""`` (and a CSV round trip gives NaN or numbers):
    text facts become None when empty, numeric facts numbers (a value that is present but not a
    number becomes -1, so a range check names it). DICOM sources get the derived ``is_dicom``.
    """
    frame = manifest.copy()
    for col in _TEXT_FACTS:
        if col in frame.columns:
            text = frame[col].astype("string").str.strip()
            frame[col] = text.astype(object).where(text.notna() & (text != ""), None)
    for col in _NUMERIC_FACTS:
        if col in frame.columns:
            text = frame[col].astype("string").str.strip()
            present = (text.notna() & (text != "")).astype(bool)
            number = pd.to_numeric(text.where(present), errors="coerce").astype(float)
            frame[col] = number.mask(present & number.isna(), -1.0)
    facts = [c for c in DICOM_FACT_COLUMNS if c in frame.columns]
    if _dicom_items(source) != "none" and facts:
        present = pd.DataFrame({c: frame[c].astype("string").fillna("").str.strip() != "" for c in facts})
        frame["is_dicom"] = present.any(axis=1).astype(bool)
    return frame


def _tables(manifest: pd.DataFrame, classes: tuple[str, ...], source: str) -> dict[str, pd.DataFrame]:
    patients = (
        manifest.groupby("patient_id")["split"].nunique().rename("n_splits").reset_index()
    )
    rows = []
    for split, group in manifest.groupby("split"):
        counts = group["label"].value_counts()
        for cls in classes:
            rows.append({
                "split": split, "label": cls, "n_split": len(group),
                "fraction": float(counts.get(cls, 0)) / max(len(group), 1),
            })
    balance = pd.DataFrame(rows, columns=["split", "label", "n_split", "fraction"])
    return {"images": _images_frame(manifest, source), "patients": patients, "class_balance": balance}


def _source_rules(gx: Any, source: str, image_size: int | None) -> list[_Rule]:
    """The per-source expectations on ``images`` (see the module docstring)."""
    E = gx.expectations
    rules: list[_Rule] = []
    if SOURCES.cfg(source).get("vectors"):
        rules += [
            _Rule(("height",), lambda: E.ExpectColumnValuesToBeInSet(column="height", value_set=[1])),
            _Rule(("width",), lambda: E.ExpectColumnValuesToBeInSet(column="width", value_set=[2])),
        ]
    else:
        size = ("image_size",) if image_size is None else ()
        rules += [
            _Rule(("height", *size), lambda: E.ExpectColumnValuesToBeInSet(column="height", value_set=[image_size])),
            _Rule(("width", *size), lambda: E.ExpectColumnValuesToBeInSet(column="width", value_set=[image_size])),
        ]
    if _dicom_items(source) != "none":
        if _dicom_items(source) == "some":
            from great_expectations.expectations.row_conditions import Column

            when: dict[str, Any] = {"row_condition": Column("is_dicom") == True}  # noqa: E712 (GX condition)
            need: tuple[str, ...] = ("is_dicom",)
        else:
            when, need = {}, ()
            rules.append(_Rule(("is_dicom",), lambda: E.ExpectColumnValuesToBeInSet(
                column="is_dicom", value_set=[True])))
        for col in ("modality", "photometric", "source_rows", "source_columns"):
            rules.append(_Rule((col, *need), lambda col=col: E.ExpectColumnValuesToNotBeNull(column=col, **when)))
        rules.append(_Rule(("photometric", *need), lambda: E.ExpectColumnValuesToBeInSet(
            column="photometric", value_set=list(PHOTOMETRIC), **when)))
        for col in ("source_rows", "source_columns"):
            rules.append(_Rule((col, *need), lambda col=col: E.ExpectColumnValuesToBeBetween(
                column=col, min_value=MIN_SIDE, **when)))
    if SOURCES.cfg(source).get("sided"):
        # nulls pass: the source may take the side from the series-level Laterality, which is not kept
        rules.append(_Rule(("laterality",), lambda: E.ExpectColumnValuesToBeInSet(
            column="laterality", value_set=["L", "R"])))
    return rules


def _suites(
    gx: Any, classes: tuple[str, ...], cfg: ValidationConfig, source: str, image_size: int | None,
    images_columns: set[str],
) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The expectations per table, and a check record for each per-source one that was skipped."""
    E = gx.expectations
    image_cols = ["image_id", "patient_id", "split", "label", "label_index", "pixel_min", "pixel_max",
                  "height", "width", "shard", "shard_index", "source_sha256"]
    images = [E.ExpectColumnValuesToNotBeNull(column=c) for c in image_cols]
    images += [
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(classes)),
        E.ExpectColumnValuesToBeInSet(column="label_index", value_set=list(range(len(classes)))),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0.0, max_value=1.0),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0.0, max_value=1.0),
        E.ExpectColumnValuesToBeUnique(column="image_id"),
    ]
    skipped: list[dict[str, Any]] = []
    for rule in _source_rules(gx, source, image_size):
        exp = rule.make()
        missing = [c for c in rule.columns if c not in images_columns]
        if not missing:
            images.append(exp)
            continue
        why = ("data.image_size was not given" if missing == ["image_size"]
               else f"no {missing[0]!r} column in the manifest (no image of this {source} dataset has that fact)")
        skipped.append({"table": "images", "expectation": exp.expectation_type, "column": exp.column,
                        "success": True, "skipped": True, "details": f"skipped: {why}"})
        log.info("validation: %s(%s) skipped: %s", exp.expectation_type, exp.column, why)
    patients = [E.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1)]
    balance = [
        E.ExpectColumnValuesToBeBetween(
            column="fraction", min_value=cfg.min_class_fraction, max_value=cfg.max_class_fraction
        ),
        E.ExpectColumnValuesToBeBetween(column="n_split", min_value=cfg.min_images_per_split),
    ]
    return {"images": images, "patients": patients, "class_balance": balance}, skipped


def _details(table: str, r: Any, frame: pd.DataFrame, cfg: ValidationConfig) -> str:
    """A readable reason for a failed expectation."""
    res = r.result or {}
    if table == "class_balance":
        bad = frame[(frame["fraction"] < cfg.min_class_fraction)
                    | (frame["fraction"] > cfg.max_class_fraction)
                    | (frame["n_split"] < cfg.min_images_per_split)]
        return "; ".join(
            f"{s}/{lbl}: fraction {f:.2f} of {n}" for s, lbl, f, n in
            bad[["split", "label", "fraction", "n_split"]].itertuples(index=False)
        )
    if table == "patients":
        return f"{res.get('unexpected_count', '?')} patients appear in more than one split"
    if r.exception_info and r.exception_info.get("raised_exception"):
        return f"could not be evaluated: {r.exception_info.get('exception_message')}"
    sample = res.get("partial_unexpected_list") or []
    return f"{res.get('unexpected_count', '?')} unexpected; e.g. {sample[:5]}"


def _context(gx: Any, project_dir: Path | None) -> Any:
    """An ephemeral GX context, or a file context in ``project_dir``; progress bars off."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if project_dir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _copy_site(context: Any, project_dir: Path, docs_dir: Path) -> None:
    """Build the Data Docs of ``context`` and copy its local site to ``docs_dir``."""
    urls = context.build_data_docs()
    index = urls.get("local_site", "")
    site = (Path(unquote(urlparse(index).path)).parent if index
            else project_dir / "gx" / "uncommitted" / "data_docs" / "local_site")
    if not (site / "index.html").is_file():
        raise RuntimeError(f"Great Expectations built no Data Docs index.html in {site} (sites: {urls})")
    docs_dir = Path(docs_dir)
    shutil.rmtree(docs_dir, ignore_errors=True)
    shutil.copytree(site, docs_dir)


def validate_manifest(
    manifest: pd.DataFrame, classes: tuple[str, ...], cfg: ValidationConfig,
    source: str = "dicom_folder", docs_dir: Path | None = None, image_size: int | None = None,
) -> ValidationReport:
    """Run the three GX suites for ``source`` on ``manifest`` and summarise the results.

    Args:
        manifest: the ingest manifest (one row per image; as built in memory or read from CSV).
        classes: ``data.classes``.
        cfg: the ``validation:`` thresholds.
        source: the ``data.source`` that produced the manifest; selects the per-source rules.
        docs_dir: when given, the Data Docs site is written there (replacing it).
        image_size: ``data.image_size``; when None the image-size rules are skipped.

    Returns:
        The report; ``report.success`` is False when any expectation failed.

    Raises:
        ValueError: ``source`` is not a known ``data.source``.
        RuntimeError: ``docs_dir`` is given but Great Expectations built no Data Docs site.
    """
    if source not in SOURCES:
        raise ValueError(f"validate_manifest: unknown source {source!r}; allowed values: {', '.join(sorted(SOURCES))}")
    import great_expectations as gx

    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:  # GX logs every store write at INFO; keep an explicit choice
        gx_log.setLevel(logging.WARNING)
    tables = _tables(manifest, classes, source)
    suites, skipped = _suites(gx, classes, cfg, source, image_size, set(tables["images"].columns))
    report = ValidationReport(success=True, source=source)
    with tempfile.TemporaryDirectory(prefix="medrobust-gx-") as tmp:
        project_dir = Path(tmp) if docs_dir is not None else None
        context = _context(gx, project_dir)
        datasource = context.data_sources.add_pandas(name="ingest")
        for table in TABLES:
            frame = tables[table]
            asset = datasource.add_dataframe_asset(name=table)
            batch_def = asset.add_batch_definition_whole_dataframe(f"{table}_all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"medrobust_{source}_{table}"))
            for exp in suites[table]:
                suite.add_expectation(exp)
            vd = context.validation_definitions.add(
                gx.ValidationDefinition(data=batch_def, suite=suite, name=f"validate_{source}_{table}")
            )
            result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            report.raw[table] = result.to_json_dict()
            report.success &= bool(result.success)
            for r in result.results:
                report.checks.append({
                    "table": table,
                    "expectation": r.expectation_config.type,
                    "column": r.expectation_config.kwargs.get("column"),
                    "success": bool(r.success),
                    "details": "" if r.success else _details(table, r, frame, cfg),
                })
            if table == "images":
                report.checks += skipped
        if project_dir is not None and docs_dir is not None:
            _copy_site(context, project_dir, Path(docs_dir))
    log.info("validation (%s) %s: %d checks, %d failed, %d skipped%s", source,
             "passed" if report.success else "FAILED", len(report.checks), len(report.failures),
             len(report.skipped), f"; Data Docs in {docs_dir}" if docs_dir is not None else "")
    return report
