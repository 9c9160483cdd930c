"""Backbones: 1-channel input, normalisation inside the model, weights-only save/load, local ImageNet
weights, trainable layers, heads and dual batch norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.models import (BACKBONES, BinaryHead, Classifier, DualBatchNorm, ModelSpec, Normalize, bn_route,
                              build_model, load_model, save_model, set_trainable)

IMAGE_BACKBONES = sorted(set(BACKBONES) - {"mlp"})


@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_backbone_takes_one_channel_and_round_trips(backbone, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(backbone, num_classes=3, width=4, image_size=32, mean=0.4, std=0.2)
    model = build_model(spec)
    assert isinstance(model, Classifier) and isinstance(model.normalize, Normalize)
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    out = model(x)
    assert out.shape == (2, 3)
    fmap = model.forward_features(x)
    assert fmap.ndim == 4 and fmap.shape[0] == 2  # the last conv feature map
    torch.testing.assert_close(model.head(model.pool(fmap)), out)
    save_model(model, spec, tmp_path)
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec == spec and not loaded.training
    torch.testing.assert_close(loaded(x), out)


def test_mlp_is_2_10_10_1_with_the_binary_head():
    model = build_model(ModelSpec("mlp", 2, in_channels=2, width=10, mean=0.0, std=1.0, head="binary"))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(10, 2), (10,), (10, 10), (10,), (1, 10), (1,)]
    x = torch.randn(5, 2)
    logits = model(x)
    z = model.head.linear(model.embed(x))
    # CE on the two logits is BCE-with-logits on z
    y = torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(nn.functional.cross_entropy(logits, y),
                               nn.functional.binary_cross_entropy_with_logits(z.squeeze(1), y.float()))
    assert isinstance(model.head, BinaryHead) and model.forward_features(x).shape == (5, 10)


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "vgg16"])
def test_local_imagenet_weights_load_and_one_channel_sums_rgb(backbone, tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(1)
    reference = getattr(tvm, backbone)(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "imagenet.pth")
    spec3 = ModelSpec(backbone, num_classes=2, in_channels=3, mean=0.0, std=1.0)
    spec1 = ModelSpec(backbone, num_classes=2, in_channels=1, mean=0.0, std=1.0)
    m3 = build_model(spec3, pretrained=tmp_path / "imagenet.pth").eval()
    m1 = build_model(spec1, pretrained=tmp_path / "imagenet.pth").eval()
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        # the pretrained trunk reproduces torchvision's features for RGB input ...
        f3 = m3.forward_features(grey.repeat(1, 3, 1, 1))
        # ... and the 1-channel model gives the same features on the grey image
        f1 = m1.forward_features(grey)
    torch.testing.assert_close(f1, f3, atol=1e-4, rtol=1e-4)
    if backbone == "resnet18":
        with torch.no_grad():
            ref = reference.avgpool(reference.layer4(reference.layer3(reference.layer2(reference.layer1(
                reference.maxpool(reference.relu(reference.bn1(reference.conv1(grey.repeat(1, 3, 1, 1))))))))))
        torch.testing.assert_close(m3.pool(f3), ref.flatten(1))


def test_pretrained_file_missing_or_wrong_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model(ModelSpec("resnet18", 2), pretrained=tmp_path / "nope.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit"):
        build_model(ModelSpec("resnet18", 2), pretrained=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model(ModelSpec("small_cnn", 2), pretrained=tmp_path / "bad.pth")


def test_trainable_last_block_and_head_freeze_the_rest_and_frozen_bn_stays_in_eval():
    model = build_model(ModelSpec("resnet18", 2))
    names = set(set_trainable(model, "last_block"))
    assert names and all(n.startswith(("features.layer4.", "head.")) for n in names)
    assert any(n.startswith("features.layer4.") for n in names) and "head.weight" in names
    model.train()
    assert not model.features.bn1.training and model.features.layer4[0].bn1.training
    assert set(set_trainable(model, "head")) == {"head.weight", "head.bias"}
    assert set(set_trainable(model, "features.layer3,head")) >= {"head.weight"}
    with pytest.raises(ValueError, match="no parameter starts with 'layer9'"):
        set_trainable(model, "layer9")
    assert len(set_trainable(model, "all")) == len(list(model.parameters()))
    assert model.features.bn1.training


def test_frozen_layers_do_not_change_in_a_training_step():
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=4))
    set_trainable(model, "last_block")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    nn.functional.cross_entropy(model(torch.rand(4, 1, 16, 16)), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("features.3.", "head.")) for k in changed)


def test_dual_bn_routes_by_flag_and_defaults_to_clean():
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=4, dual_bn=True))
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    assert len(duals) == 4 and not any(isinstance(m, nn.BatchNorm2d) and m not in
                                       {d.clean for d in duals} | {d.adv for d in duals}
                                       for m in model.modules())
    model.train()
    x = torch.rand(4, 1, 16, 16) * 0.5 + 0.5
    with bn_route(model, "adv"):
        model(x)
    assert torch.equal(duals[0].clean.running_mean, torch.zeros_like(duals[0].clean.running_mean))
    assert not torch.equal(duals[0].adv.running_mean, torch.zeros_like(duals[0].adv.running_mean))
    assert all(d.route == "clean" for d in duals)
    with pytest.raises(ValueError, match="dual_bn=True"):
        with bn_route(build_model(ModelSpec("small_cnn", 2, width=4)), "adv"):
            pass


def test_normalize_is_the_first_layer_and_uses_buffers():
    norm = Normalize(0.5, 0.25)
    x = torch.full((1, 1, 2, 2), 0.75)
    assert torch.allclose(norm(x), torch.ones_like(x))
    assert {n for n, _ in norm.named_buffers()} == {"mean", "std"} and not list(norm.parameters())
    assert torch.allclose(Normalize([0.0, 1.0], [1.0, 2.0], 2)(torch.tensor([[1.0, 3.0]])), torch.tensor([[1.0, 1.0]]))


def test_unknown_backbone_lists_available():
    with pytest.raises(KeyError, match="small_cnn"):
        build_model(ModelSpec("vit_huge", 2))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_last_block_names_real_modules(backbone):
    model = build_model(ModelSpec(backbone, 2, in_channels=2 if backbone == "mlp" else 1, width=4))
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    assert model.last_block and all(b in names for b in model.last_block)
    trainable = set_trainable(model, "last_block")
    assert trainable and len(trainable) < len(list(model.parameters()))


def test_vgg16_pooled_feature_is_fc7():
    model = build_model(ModelSpec("vgg16", 2)).eval()
    assert model.embed(torch.rand(1, 1, 32, 32)).shape == (1, 4096)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 4096


def test_pretrained_from_a_medrobust_model_loads_the_encoder_not_the_head(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelSpec("small_cnn", 2, width=4))
    save_model(source, ModelSpec("small_cnn", 2, width=4), tmp_path)
    torch.manual_seed(1)
    model = build_model(ModelSpec("small_cnn", 3, width=4), pretrained=tmp_path / "model.pt")
    for k, v in source.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.head.out_features == 3
    with pytest.raises(ValueError, match="does not fit this backbone"):
        build_model(ModelSpec("small_cnn", 2, width=8), pretrained=tmp_path / "model.pt")


def test_a_backbone_entry_carries_its_normalisation():
    """timm's pretrained_cfg: ImageNet weights bring ImageNet's mean/std (grey: the mean of the three),
    CLIP normalises inside itself, a backbone trained from scratch gets the spec's default."""
    from medrobust.models import IMAGENET_MEAN, IMAGENET_STD, backbone_cfg

    assert backbone_cfg("resnet18").normalization(3, pretrained=True) == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert backbone_cfg("densenet121").normalization(1, pretrained=True) == {"mean": 0.449, "std": 0.226}
    assert backbone_cfg("vgg16").normalization(1, pretrained=False) == {"mean": 0.5, "std": 0.25}
    assert backbone_cfg("clip_vit_b32").normalization(1, pretrained=False) == {"mean": 0.0, "std": 1.0}
    assert backbone_cfg("small_cnn").normalization(1, pretrained=True) == {"mean": 0.5, "std": 0.25}
    assert not backbone_cfg("small_cnn").has_weights and backbone_cfg("resnet50").has_weights



def test_pretrained_files_that_are_not_usable_give_clear_errors(tmp_path):
    torchvision_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, torchvision_like)
    with pytest.raises(ValueError, match="small_cnn has no ImageNet weights"):
        build_model(ModelSpec("small_cnn", 2), pretrained=torchvision_like)
    not_weights = tmp_path / "notes.txt"
    not_weights.write_text("not a weights file")
    with pytest.raises(ValueError, match="not a weights file torch can read"):
        build_model(ModelSpec("resnet18", 2), pretrained=not_weights)
