"""Bit-level agreement with torchattacks 3.5.1 (a test-only reference) on the same model and inputs."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import get_attack

torchattacks = pytest.importorskip("torchattacks")

CASES = [
    ("fgsm", {"eps": 8 / 255}, lambda m: torchattacks.FGSM(m, eps=8 / 255)),
    ("fgsm", {"eps": 3 / 255}, lambda m: torchattacks.FGSM(m, eps=3 / 255)),
    ("bim", {"eps": 8 / 255}, lambda m: torchattacks.BIM(m)),  # defaults: α=2/255, 10 steps
    ("bim", {"eps": 4 / 255, "steps": 0}, lambda m: torchattacks.BIM(m, eps=4 / 255, steps=0)),  # Kurakin rule
    ("bim", {"eps": 8 / 255, "step_size": 1 / 255, "steps": 7},
     lambda m: torchattacks.BIM(m, eps=8 / 255, alpha=1 / 255, steps=7)),
    ("pgd", {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": False},
     lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)),
    ("pgd", {"eps": 4 / 255, "step_size": 1 / 255, "steps": 5, "random_start": False},
     lambda m: torchattacks.PGD(m, eps=4 / 255, alpha=1 / 255, steps=5, random_start=False)),
    ("pgdl2", {"random_start": False}, lambda m: torchattacks.PGDL2(m, random_start=False)),  # ε=1, α=0.2
    ("pgdl2", {"eps": 0.5, "step_size": 0.1, "steps": 7, "random_start": False},
     lambda m: torchattacks.PGDL2(m, eps=0.5, alpha=0.1, steps=7, random_start=False)),
    ("mifgsm", {}, lambda m: torchattacks.MIFGSM(m)),  # ε=8/255, α=2/255, 10 steps, decay 1
    ("mifgsm", {"eps": 6 / 255, "step_size": 1 / 255, "steps": 8, "decay": 0.5},
     lambda m: torchattacks.MIFGSM(m, eps=6 / 255, alpha=1 / 255, steps=8, decay=0.5)),
]


@pytest.mark.parametrize(("name", "params", "reference"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_same_images_as_torchattacks(trained, name, params, reference):
    model, x, y = trained
    ours = get_attack(name, model, **params)(x, y)
    theirs = reference(model)(x, y)
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert (ours - x).abs().max() > 0  # the attack did something


def test_bim_default_step_count_matches():
    m = torch.nn.Linear(1, 2)
    for eps in (1 / 255, 4 / 255, 8 / 255, 16 / 255):
        assert get_attack("bim", m, eps=eps, steps=0).steps == torchattacks.BIM(m, eps=eps, steps=0).steps
    assert get_attack("bim", m).steps == torchattacks.BIM(m).steps == 10
