"""Every registered training method works with every backbone: one optimisation step on a tiny batch.

Attack budgets are cut to one step (the cost, not the maths, is what grows with the backbone). The
2-D ``mlp`` backbone takes every method except those that need images (``TrainingMethod.image_only``) or
batch norm, which must refuse it with a clear error.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medrobust.data.shards import ArraySplit
from medrobust.defenses import TRAINING_METHODS
from medrobust.models import BACKBONES
from tests.conftest import build_from_params, tiny_params

IMAGE_BACKBONES = sorted(set(BACKBONES) - {"mlp"})
NO_BATCH_NORM = {"vgg16"} | {b for b in BACKBONES if b.startswith("clip_")}  # dsbn must refuse these


def _params(method: str, backbone: str, channels_2d: bool = False):
    section = dict(tiny_params().train.methods.get(method) or {})
    for key in ("steps", "probe_steps"):
        if key in section:
            section[key] = 1
    overrides = {"train": {"method": method, "model": {"backbone": backbone, "width": 4 if backbone != "mlp" else 10},
                           "methods": {method: section}}}
    if channels_2d:
        overrides["train"]["model"]["head"] = "binary"
    return tiny_params(**overrides)


def _split(shape: tuple[int, ...], n: int = 4) -> ArraySplit:
    g = torch.Generator().manual_seed(0)
    return ArraySplit(torch.rand(n, *shape, generator=g), torch.tensor([0, 1] * (n // 2)),
                      pd.DataFrame({"modality": ["MG"] * n}))


def _one_step(model, defense, split) -> None:
    model.train()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    loss, stats = defense.loss(model, split.x, split.y)
    assert torch.isfinite(loss) and all(isinstance(v, float) for v in stats.values())
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    torch.optim.SGD(trainable, lr=0.01).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))


@pytest.mark.integration
@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
@pytest.mark.parametrize("method", sorted(TRAINING_METHODS))
def test_method_steps_on_image_backbone(method, backbone):
    torch.manual_seed(0)
    split = _split((1, 32, 32))
    if TRAINING_METHODS[method].model_overrides.get("dual_bn") and backbone in NO_BATCH_NORM:
        with pytest.raises(ValueError, match=f"backbone '{backbone}' has no batch-norm layers"):
            build_from_params(_params(method, backbone), method, split)
        return
    model, defense, _ = build_from_params(_params(method, backbone), method, split)
    _one_step(model, defense, split)


@pytest.mark.parametrize("method", sorted(TRAINING_METHODS))
def test_method_on_2d_mlp_or_clear_refusal(method):
    torch.manual_seed(0)
    split = _split((2,))
    split.x.mul_(0.5).add_(0.25)
    needs_images = getattr(TRAINING_METHODS[method], "image_only", False) or TRAINING_METHODS[method].model_overrides.get("dual_bn")
    if needs_images:
        with pytest.raises((ValueError, KeyError), match=r"(?i)image|batch.norm|dual_bn"):
            model, defense, _ = build_from_params(_params(method, "mlp", channels_2d=True), method, split)
            defense.loss(model, split.x, split.y)
        return
    model, defense, _ = build_from_params(_params(method, "mlp", channels_2d=True), method, split)
    _one_step(model, defense, split)
