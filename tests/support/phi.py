"""Test helper: fail when a pipeline output holds an identifier of the source data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medrobust.data.audit import DEFAULT_CSV_COLUMNS, collect_identifiers, scan_result


def assert_no_phi(source_dirs: Sequence[Path | str], output_paths: Sequence[Path | str],
                  csv_columns: Sequence[str] = DEFAULT_CSV_COLUMNS, min_identifiers: int = 1) -> int:
    """Assert that no identifier of ``source_dirs`` occurs in any file under ``output_paths``.

    Args:
        source_dirs: the input data (DICOM folders, labels CSVs).
        output_paths: stage output folders, databases, log files.
        csv_columns: identifying columns of source CSVs (see :func:`medrobust.data.audit.collect_identifiers`).
        min_identifiers: the sources must yield at least this many values, so the check is not vacuous.

    Returns:
        The number of files scanned.

    Raises:
        AssertionError: listing file, offset, kind and hash of each finding (never the value).
    """
    identifiers = collect_identifiers([Path(p) for p in source_dirs], csv_columns)
    n = sum(len(v) for v in identifiers.values())
    assert n >= min_identifiers, f"only {n} identifying values in {list(source_dirs)}: the PHI check would be vacuous"
    result = scan_result([Path(p) for p in output_paths], identifiers)
    assert not result.findings, (
        f"{len(result.findings)} source identifiers found in outputs (salt {result.salt}):\n"
        + "\n".join(f"  {f}" for f in result.findings[:50])
    )
    return result.files_scanned
