"""Captions for image–label data, from templates over the label and the header facts.

The embedded data are mammograms with a label (``lesion`` / ``normal``) and DICOM facts in the
manifest (``modality``, ``view_position``, ``laterality``). A caption names the kind of image, the
finding and, where known, the side and the view::

    a mammogram with a lesion in the left breast
    a craniocaudal mammogram of the right breast showing no lesion
    left breast, mediolateral oblique view: a lesion

One of :data:`TEMPLATES` is chosen per image by a seeded generator, so the same seed gives the same
captions. Unknown modalities read "a medical image"; a label other than ``lesion`` / ``normal`` is
written as it is ("with benign", "showing benign"); a missing side or view is left out. Nothing in a
caption comes from an identifier.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

#: the kind of image per DICOM Modality
MODALITY_NOUNS = {"MG": "mammogram", "CR": "chest x-ray", "DX": "chest x-ray", "CT": "CT slice", "MR": "magnetic resonance slice"}
#: the organ named with a side, per DICOM Modality
ORGANS = {"MG": "breast", "CR": "lung", "DX": "lung"}
SIDES = {"L": "left", "R": "right"}
VIEWS = {"CC": "craniocaudal", "MLO": "mediolateral oblique", "PA": "posteroanterior", "AP": "anteroposterior"}
#: what a label says, in the three grammatical places the templates use
FINDINGS = {"lesion": ("with a lesion", "showing a lesion", "a lesion"),
            "normal": ("with no lesion", "showing no lesion", "no lesion")}

#: ``{with}`` / ``{showing}`` / ``{bare}``: the finding; ``{noun}``: the image kind; ``{side}``: "left breast"
TEMPLATES = (
    "a {noun} {with}{in_side}",
    "a {view}{noun}{of_side} {showing}",
    "{side_view}{bare}",
)


def _finding(label: str) -> tuple[str, str, str]:
    return FINDINGS.get(label, (f"with {label}", f"showing {label}", label))


def _fact(row: pd.Series, key: str) -> str:
    value = row.get(key)
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip().upper()


def caption(row: pd.Series, label: str, template: int) -> str:
    """One caption from a manifest row's facts and its class name.

    Args:
        row: a manifest row (``modality``, ``view_position``, ``laterality`` are read when present).
        label: the class name.
        template: an index into :data:`TEMPLATES`.

    Returns:
        The caption, lower case, single spaces.
    """
    modality = _fact(row, "modality")
    noun = MODALITY_NOUNS.get(modality, "medical image")
    organ = ORGANS.get(modality, "")
    side = SIDES.get(_fact(row, "laterality"), "")
    view = VIEWS.get(_fact(row, "view_position"), "")
    side_organ = f"{side} {organ}".strip() if side else ""
    with_, showing, bare = _finding(label)
    text = TEMPLATES[template].format(
        noun=noun, **{"with": with_}, showing=showing, bare=bare,
        in_side=f" in the {side_organ}" if side_organ else "",
        of_side=f" of the {side_organ}" if side_organ else "",
        view=f"{view} " if view else "",
        side_view=(f"{side_organ}, {view} view: " if side_organ and view else f"{side_organ or view}: "
                   if side_organ or view else f"a {noun}: "),
    )
    return re.sub(r"\s+", " ", text).strip().lower()


def make_captions(manifest: pd.DataFrame, labels: list[str], seed: int) -> list[str]:
    """A caption per manifest row, each from a template drawn by a generator seeded with ``seed``.

    Args:
        manifest: the split's manifest, in the order of its images.
        labels: the class name of each row.
        seed: seeds the template choice.

    Returns:
        One caption per row.

    Raises:
        ValueError: ``labels`` and ``manifest`` differ in length.
    """
    if len(labels) != len(manifest):
        raise ValueError(f"captions: {len(labels)} labels for {len(manifest)} manifest rows")
    choice = np.random.default_rng(seed).integers(0, len(TEMPLATES), len(manifest))
    return [caption(row, label, int(t)) for (_, row), label, t in zip(manifest.iterrows(), labels, choice)]


def caption_vocabulary(captions: list[str]) -> list[str]:
    """The sorted set of words in ``captions`` plus the words the templates can write: the caption
    attack's substitution and insertion candidates."""
    words = {w for c in captions for w in c.split()}
    for phrases in (MODALITY_NOUNS.values(), ORGANS.values(), SIDES.values(), VIEWS.values(),
                    *FINDINGS.values()):
        words.update(w for p in phrases for w in p.split())
    return sorted(w for w in words if w)


__all__ = ["FINDINGS", "MODALITY_NOUNS", "ORGANS", "SIDES", "TEMPLATES", "VIEWS", "caption", "caption_vocabulary",
           "make_captions"]
