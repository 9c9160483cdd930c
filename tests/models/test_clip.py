"""CLIP image-encoder backbones: local OpenAI/open_clip weights give open_clip's ``encode_image``;
grey input, resizing and CLIP normalisation happen inside the model; RAN and linear probing train the
head only on a frozen CLIP encoder.

A tiny CLIP (ViT width 64, 2 layers, patch 16, 32×32 input, embedding 32) stands in for the real
architectures; it is registered for each test through ``monkeypatch``.
"""

from __future__ import annotations

from collections.abc import Iterator

import warnings

import pytest
import torch
import torch.nn.functional as F

from medrobust.defenses import get_method
from medrobust.models import BACKBONES, ModelSpec, build_model, load_model, save_model, set_trainable
from medrobust.models.clip import CLIP_MEAN, CLIP_CFG, CLIP_STD, ClipImageEncoder, clip_backbone

open_clip_model = pytest.importorskip("open_clip.model")

VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
EMBED = 32


@pytest.fixture
def tiny_clip() -> Iterator[torch.nn.Module]:
    """A full open_clip CLIP model (OpenAI layout, QuickGELU) with random weights; ``clip_tiny`` registered."""
    BACKBONES.add("clip_tiny", clip_backbone(EMBED, VISION, name="clip_tiny"), **CLIP_CFG)
    torch.manual_seed(0)
    model = open_clip_model.CLIP(EMBED, VISION, TEXT, quick_gelu=True).eval()
    with torch.no_grad():  # open_clip initialises a few tensors to zero; make every weight matter
        for p in model.visual.parameters():
            p.add_(0.02 * torch.randn_like(p))
    yield model
    BACKBONES.remove("clip_tiny")


def clip_input(x: torch.Tensor) -> torch.Tensor:
    """CLIP's own preprocessing of [0, 1] images at the tower's size: RGB, then per-channel mean/std."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def spec(in_channels: int = 1, **kw) -> ModelSpec:
    return ModelSpec("clip_tiny", num_classes=2, in_channels=in_channels, **{"mean": 0.0, "std": 1.0, **kw})


def test_full_clip_state_dict_gives_encode_image(tiny_clip, tmp_path):
    torch.save(tiny_clip.state_dict(), tmp_path / "clip.pt")  # visual.* and the text tower's keys
    model = build_model(spec(), pretrained=tmp_path / "clip.pt").eval()
    assert isinstance(model.features, ClipImageEncoder) and model.head.in_features == EMBED
    grey = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_clip.encode_image(clip_input(grey))
        emb = model.embed(grey)
        fmap = model.forward_features(grey)
    assert expected.abs().max() > 0.1  # a non-trivial embedding
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    assert fmap.shape == (3, EMBED, 1, 1)  # a 1×1 "feature map", pooled by Flatten
    # three-channel input goes straight to the tower
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model3 = build_model(spec(3), pretrained=tmp_path / "clip.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(model3.embed(rgb), tiny_clip.encode_image(clip_input(rgb)), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_visual_only_wrapped_fp16_and_torchscript_weights_load(tiny_clip, tmp_path):
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny_clip.encode_image(clip_input(grey))
    visual = tiny_clip.visual.state_dict()
    torch.save(visual, tmp_path / "visual.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_clip.state_dict().items()}},
               tmp_path / "checkpoint.pt")  # an open_clip training checkpoint
    torch.save({k: v.half() for k, v in tiny_clip.state_dict().items()}, tmp_path / "fp16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tiny_clip.visual, clip_input(grey), check_trace=False)
    traced.save(str(tmp_path / "scripted.pt"))  # OpenAI ships TorchScript archives
    for name, tol in (("visual.pt", 1e-5), ("checkpoint.pt", 1e-5), ("scripted.pt", 1e-5), ("fp16.pt", 5e-2)):
        model = build_model(spec(), pretrained=tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.embed(grey), expected, atol=tol, rtol=tol, msg=name)


def test_smaller_images_are_resized_bicubic_inside_the_model(tiny_clip, tmp_path):
    torch.save(tiny_clip.state_dict(), tmp_path / "clip.pt")
    model = build_model(spec(), pretrained=tmp_path / "clip.pt").eval()
    small = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    up = F.interpolate(small.detach().repeat(1, 3, 1, 1), size=(32, 32), mode="bicubic", align_corners=False,
                       antialias=True)
    with torch.no_grad():
        expected = tiny_clip.encode_image(clip_input(up))
    emb = model.embed(small)
    torch.testing.assert_close(emb.detach(), expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(emb.sum(), small)  # attacks differentiate through the resize
    assert grad.shape == small.shape and grad.abs().sum() > 0


def test_wrong_or_missing_weights_are_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model(spec(), pretrained=tmp_path / "nope.pt")
    other = open_clip_model.CLIP(EMBED, {**VISION, "layers": 1}, TEXT, quick_gelu=True)
    torch.save(other.state_dict(), tmp_path / "one_layer.pt")
    with pytest.raises(ValueError, match="do not fit.*missing.*resblocks.1"):
        build_model(spec(), pretrained=tmp_path / "one_layer.pt")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match="ResNet"):
        build_model(spec(), pretrained=tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_model(spec(2))


def test_registered_backbones_and_round_trip(tiny_clip, tmp_path):
    assert "clip_vit_b32" in BACKBONES
    torch.save(tiny_clip.state_dict(), tmp_path / "clip.pt")
    s = spec()
    model = build_model(s, pretrained=tmp_path / "clip.pt").eval()
    save_model(model, s, tmp_path / "saved")
    loaded, loaded_spec = load_model(tmp_path / "saved")  # rebuilt from the spec alone, then its weights
    x = torch.rand(2, 1, 32, 32)
    assert loaded_spec == s
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("method", ["ran", "linear_probe"])
def test_head_only_methods_train_one_step_on_a_frozen_clip(tiny_clip, tmp_path, method):
    torch.save(tiny_clip.state_dict(), tmp_path / "clip.pt")
    defense = get_method(method)
    model = build_model(spec(**defense.model_overrides), pretrained=tmp_path / "clip.pt")
    trainable = set_trainable(model, defense.trainable)
    assert trainable and all(n.startswith("head.") for n in trainable)
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 1, 32, 32, generator=g), torch.tensor([0, 1] * 4)
    defense.prepare(model, x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss, _ = defense.loss(model, x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("head.") for k in changed), changed
    model.eval()
    with torch.no_grad():  # the encoder still computes CLIP's embedding
        torch.testing.assert_close(model.embed(x), tiny_clip.encode_image(clip_input(x)), atol=1e-5, rtol=1e-5)
