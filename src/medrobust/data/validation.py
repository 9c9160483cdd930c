"""Great Expectations (1.x) checks on the ingest manifest.

Three tables are validated, each with its own suite, so every rule is a plain GX expectation:

* ``images`` — one row per image: no nulls, labels in the allowed set, pixel range in [0, 1],
  known splits, unique image ids;
* ``patients`` — one row per pseudonymous patient: the number of splits it appears in is exactly 1
  (no patient leakage);
* ``class_balance`` — one row per (split, class): the class fraction lies within the bounds from
  params.yaml, and every split has enough images.

:func:`validate_manifest` returns a :class:`ValidationReport`; the ingest stage writes it as JSON
(the full GX results) and markdown (a readable summary) and stops when it fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medrobust.config import ValidationConfig

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    success: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["success"]]

    def to_markdown(self) -> str:
        lines = [
            f"# Ingest validation: {'PASSED' if self.success else 'FAILED'}",
            "",
            "| table | expectation | column | result | details |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            lines.append(
                f"| {c['table']} | {c['expectation']} | {c.get('column') or ''} | "
                f"{'ok' if c['success'] else '**FAILED**'} | {c.get('details', '')} |"
            )
        return "\n".join(lines) + "\n"


def _tables(manifest: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, pd.DataFrame]:
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
    return {"images": manifest, "patients": patients, "class_balance": pd.DataFrame(rows)}


def _suites(gx: Any, classes: tuple[str, ...], cfg: ValidationConfig) -> dict[str, list[Any]]:
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
    patients = [E.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1)]
    balance = [
        E.ExpectColumnValuesToBeBetween(
            column="fraction", min_value=cfg.min_class_fraction, max_value=cfg.max_class_fraction
        ),
        E.ExpectColumnValuesToBeBetween(column="n_split", min_value=cfg.min_images_per_split),
    ]
    return {"images": images, "patients": patients, "class_balance": balance}


def validate_manifest(
    manifest: pd.DataFrame, classes: tuple[str, ...], cfg: ValidationConfig,
    source: str = "dicom_folder", docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the three GX suites on ``manifest`` and summarise the results."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas(name="ingest")
    report = ValidationReport(success=True)
    for table, frame in _tables(manifest, classes).items():
        asset = source.add_dataframe_asset(name=table)
        batch_def = asset.add_batch_definition_whole_dataframe(f"{table}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"medrobust_{table}"))
        for exp in _suites(gx, classes, cfg)[table]:
            suite.add_expectation(exp)
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch_def, suite=suite, name=f"validate_{table}")
        )
        result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        report.raw[table] = result.to_json_dict()
        report.success &= bool(result.success)
        for r in result.results:
            cfg_ = r.expectation_config
            kwargs = dict(cfg_.kwargs)
            res = r.result or {}
            details = ""
            if not r.success:
                sample = res.get("partial_unexpected_list") or []
                details = f"{res.get('unexpected_count', '?')} unexpected; e.g. {sample[:5]}"
                if table == "class_balance":
                    bad = frame[(frame["fraction"] < cfg.min_class_fraction)
                                | (frame["fraction"] > cfg.max_class_fraction)
                                | (frame["n_split"] < cfg.min_images_per_split)]
                    details = "; ".join(
                        f"{s}/{lbl}: fraction {f:.2f} of {n}" for s, lbl, f, n in
                        bad[["split", "label", "fraction", "n_split"]].itertuples(index=False)
                    )
                if table == "patients":
                    details = f"{res.get('unexpected_count', '?')} patients appear in more than one split"
            report.checks.append({
                "table": table,
                "expectation": cfg_.type,
                "column": kwargs.get("column"),
                "success": bool(r.success),
                "details": details,
            })
    log.info("validation %s (%d checks, %d failed)", "passed" if report.success else "FAILED",
             len(report.checks), len(report.failures))
    return report
