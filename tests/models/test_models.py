"""Backbones: 1-channel input, normalisation inside the model, weights-only save/load."""

from __future__ import annotations

import pytest
import torch

from medrobust.models import MODELS, ModelSpec, Normalize, build_model, load_model, save_model


@pytest.mark.parametrize("backbone", sorted(MODELS))
def test_backbone_takes_one_channel_and_round_trips(backbone, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(backbone, num_classes=3, width=4, image_size=32, mean=0.4, std=0.2)
    model = build_model(spec)
    assert isinstance(model[0], Normalize)
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    out = model(x)
    assert out.shape == (2, 3)
    save_model(model, spec, tmp_path)
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec == spec and not loaded.training
    torch.testing.assert_close(loaded(x), out)


def test_normalize_is_the_first_layer_and_uses_buffers():
    norm = Normalize(0.5, 0.25)
    x = torch.full((1, 1, 2, 2), 0.75)
    assert torch.allclose(norm(x), torch.ones_like(x))
    assert {n for n, _ in norm.named_buffers()} == {"mean", "std"} and not list(norm.parameters())


def test_unknown_backbone_lists_available():
    with pytest.raises(KeyError, match="small_cnn"):
        build_model(ModelSpec("vit_huge", 2))
