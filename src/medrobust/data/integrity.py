"""Consistency checks on a DICOM object's lookup tables, before its pixels are mapped through them.

A palette (PS3.3 C.7.6.3.1.5) or VOI LUT (C.11.2) that is missing, or holds fewer entries than its
descriptor declares, would make the mapping fail deep inside pydicom (or read past the table); it is
quarantined as ``bad_lookup_table`` with what is missing.
"""

from __future__ import annotations

import pydicom

from medrobust.data.sources.base import Rejected


def _lut_entries(descriptor: object, data: object) -> tuple[int, int]:
    """(entries declared, entries present) of a lookup table (PS3.3 C.7.6.3.1.5: 0 declared means 65536)."""
    declared = int(descriptor[0]) or 65536  # type: ignore[index]
    bits = int(descriptor[2])  # type: ignore[index]
    if isinstance(data, (bytes, bytearray)):
        present = len(data) // (2 if bits > 8 else 1)
    else:
        present = len(data) if hasattr(data, "__len__") else 1  # type: ignore[arg-type]
    return declared, present


def check_luts(ds: pydicom.Dataset, photometric: str) -> None:
    """A palette or VOI lookup table that is missing or shorter than its descriptor says (``bad_lookup_table``)."""
    if photometric == "PALETTE COLOR":
        for colour in ("Red", "Green", "Blue"):
            desc = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
            data = ds.get(f"{colour}PaletteColorLookupTableData")
            if desc is None or (data is None and f"Segmented{colour}PaletteColorLookupTableData" not in ds):
                raise Rejected("bad_lookup_table", f"PALETTE COLOR without its {colour} palette lookup table "
                                                   "(descriptor and data, PS3.3 C.7.6.3.1.5); re-export the file")
            if data is not None:
                declared, present = _lut_entries(desc, data)
                if present < declared:
                    raise Rejected("bad_lookup_table", f"the {colour} palette lookup table holds {present} entries; "
                                                       f"its descriptor declares {declared}")
    if "VOILUTSequence" in ds and not ("WindowCenter" in ds and "WindowWidth" in ds):
        for n, item in enumerate(ds.VOILUTSequence):
            desc, data = item.get("LUTDescriptor"), item.get("LUTData")
            if desc is None or data is None:
                raise Rejected("bad_lookup_table", f"VOI LUT item {n} lacks its LUTDescriptor or LUTData")
            declared, present = _lut_entries(desc, data)
            if present < declared:
                raise Rejected("bad_lookup_table", f"VOI LUT item {n} holds {present} entries; its descriptor "
                                                   f"declares {declared} (the file is damaged: re-export it)")


__all__ = ["check_luts"]
