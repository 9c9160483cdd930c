"""PHI audit: look for the source data's patient and instance identifiers in pipeline outputs.

Two steps:

1. :func:`collect_identifiers` reads the DICOM headers of the *sources* (``stop_before_pixels``)
   and gathers the identifying values per kind (:data:`IDENTIFYING_KEYWORDS`), optionally also
   the values of named columns of CSV files among the sources (a labels CSV's ``SOPInstanceUID``
   column holds UIDs; ``patient_id`` holds patient IDs).
2. :func:`scan` searches every file under the *output* paths — text and binary alike: CSVs,
   JSON, logs, ``.npy`` shards, sqlite databases such as ``mlflow.db`` (text is stored as UTF-8
   inside its pages), model files, artifact folders — for each identifier as bytes. Files are
   read in chunks with an overlap of the longest identifier, so large files stream and a value
   split across two chunks is still found. ZIP archives (``.pt``, ``.npz``, ``.zip``) and gzip
   files are also searched decompressed.

What counts as an identifier (the *trivial-value rule*): a value is dropped when, stripped of
spaces and ``^``, it is shorter than :data:`MIN_LENGTH` (4) characters, is purely numeric (digits,
``.``, ``-``) and has fewer than :data:`MIN_NUMERIC_LENGTH` (6) characters (``4900`` would match
inside any float printed in a CSV), consists of one repeated character (``0000``), or is a generic
placeholder (:data:`PLACEHOLDERS`, case-insensitive, such as ``ANONYMOUS``). Registered DICOM UIDs (SOP classes, transfer syntaxes) are not collected.
Person names (VR PN, ``Family^Given^Middle^Prefix^Suffix``) are searched as written, with ``^``
replaced by spaces, as ``Given Family`` and ``Family, Given``, and each component is searched on
its own (kind ``<Keyword>.component``), all under the same trivial-value rule. Dates are only
collected for Patient's Birth Date: study dates are shared by many patients and would match
unrelated numbers.

A finding names the file, the byte offset, the identifier's *kind* and a salted SHA-256 prefix of
the value (the salt is in the report, so whoever holds the source can tell which value it was).
The value itself is never printed, logged or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrobust.data.audit.identifiers import (DEFAULT_CSV_COLUMNS, IDENTIFYING_KEYWORDS, PLACEHOLDERS,
                                              collect_identifiers, is_trivial, name_variants)
from medrobust.data.audit.scan import CHUNK_SIZE, Finding, ScanResult, fingerprint, report, scan, scan_result


def audit(sources: list[Path], outputs: list[Path], csv_columns: Sequence[str] = DEFAULT_CSV_COLUMNS,
          chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    """Collect identifiers from ``sources``, scan ``outputs``, return :func:`report`'s dict.

    Args:
        sources: folders or files of the *input* data (see :func:`collect_identifiers`).
        outputs: folders or files of pipeline outputs to search; none may lie inside a source.
        csv_columns: columns of source CSVs whose values are identifiers; ``()`` ignores CSVs.
        chunk_size: bytes read at a time (see :func:`scan`).

    Returns:
        The :func:`report` of the scan (a random salt); ``report["clean"]`` is True when nothing was found.

    Raises:
        ValueError: an output path lies inside a source (the inputs would match themselves), or the
            sources hold no identifier.
        FileNotFoundError: a source or output path does not exist.
    """
    for out in outputs:
        for src in sources:
            o, s = Path(out).resolve(), Path(src).resolve()
            if o == s or s in o.parents:
                raise ValueError(f"output path {out} is inside source {src}: the audit searches outputs for the "
                                 "sources' identifiers; pass the input data with --source and only outputs as paths")
    identifiers = collect_identifiers(sources, csv_columns)
    return report(scan_result(outputs, identifiers, chunk_size=chunk_size), identifiers)


__all__ = ["DEFAULT_CSV_COLUMNS", "Finding", "IDENTIFYING_KEYWORDS", "PLACEHOLDERS", "ScanResult", "audit",
           "collect_identifiers", "fingerprint", "is_trivial", "name_variants", "report", "scan", "scan_result"]
