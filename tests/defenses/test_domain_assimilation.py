"""Domain assimilation (arXiv 2402.16005): the texture–colour adapter and the CE + GLCM objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medrobust.config import ConfigError
from medrobust.training.config import method_settings
from medrobust.defenses import TRAINING_METHODS, get_method
from medrobust.defenses.domain_assimilation import DomainAssimilation, assimilation_loss
from medrobust.defenses.glcm import glcm_loss
from medrobust.models import (
    ADAPTERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    build_model,
    load_model,
    save_model,
    set_trainable,
)
from medrobust.models.assimilation import AssimilationAdapter


def assimilation_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec("small_cnn", 2, width=4, image_size=16, **DomainAssimilation.model_overrides)
    return build_model(spec)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_weightings_hand_computed():
    ce, texture = torch.tensor(2.0), torch.tensor(0.5)
    assert assimilation_loss(ce, texture, 0.98, "alpha_ce").item() == pytest.approx(0.98 * 2.0 + 0.02 * 0.5)  # 1.97
    assert assimilation_loss(ce, texture, 0.98, "alpha_glcm").item() == pytest.approx(0.02 * 2.0 + 0.98 * 0.5)  # 0.53
    assert assimilation_loss(ce, texture, 0.98, "additive").item() == pytest.approx(2.0 + 0.98 * 0.5)  # 2.49
    with pytest.raises(ValueError, match="alpha_ce"):
        assimilation_loss(ce, texture, 0.98, "product")


def test_registered_with_the_adapter_and_imagenet_normalisation():
    assert TRAINING_METHODS["domain_assimilation"] is DomainAssimilation
    assert DomainAssimilation.model_overrides == {"adapter": "assimilation", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    module, channels = ADAPTERS["assimilation"](1)
    assert isinstance(module, AssimilationAdapter) and channels == 3
    model = assimilation_model()
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    assert model.features[0][0].in_channels == 3  # the backbone sees RGB


def test_loss_equals_the_weighted_sum_recomputed_by_hand():
    model, (x, y) = assimilation_model(), batch()
    model.eval()  # no BN statistics drift between the two forward passes
    method = get_method("domain_assimilation", alpha=0.9, levels=8, temperature=0.3, metric="l2")  # alpha_glcm
    loss, stats = method.loss(model, x, y)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
        texture = glcm_loss(x, model.adapter(x), levels=8, temperature=0.3, metric="l2")
    assert loss.item() == pytest.approx(0.1 * ce.item() + 0.9 * texture.item(), rel=1e-5)
    assert stats["train_ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert stats["train_glcm"] == pytest.approx(texture.item(), rel=1e-6) and texture.item() > 0
    assert 0.0 <= stats["train_acc"] <= 1.0
    plain = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16))
    with pytest.raises(ValueError, match="3 channels"):
        method.loss(plain, x, y)


def test_adapter_outputs_rgb_in_unit_range_and_starts_near_identity_texture():
    torch.manual_seed(0)
    adapter = AssimilationAdapter(1)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    x[0] = 0.0
    x[1] = 1.0
    rgb = adapter(x)
    assert rgb.shape == (3, 3, 16, 16)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert (adapter.texture(x) - x).abs().max() < 0.05  # residual texture module starts near the identity
    # the colour module starts near grey: sigmoid(4·t − 2) on every channel plus a slight tint
    near_grey = torch.sigmoid(4 * adapter.texture(x) - 2).expand(-1, 3, -1, -1)
    assert (rgb - near_grey).abs().mean() < 0.05
    assert rgb[0].mean() < 0.2 < 0.8 < rgb[1].mean()  # black stays dark, white stays light (0.12 / 0.88 ± tint)
    assert AssimilationAdapter(3)(torch.rand(2, 3, 8, 8)).shape == (2, 3, 8, 8)


def test_glcm_loss_trains_every_adapter_parameter_and_leaves_the_backbone_alone():
    model, (x, _) = assimilation_model(), batch()
    texture = glcm_loss(x, model.adapter(x), levels=8)
    texture.backward()
    adapter_params = dict(model.adapter.named_parameters())
    assert len(adapter_params) == 12  # texture: 3 convs; colour: skip + 2 MLP convs (weight + bias each)
    for name, p in adapter_params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("adapter."))
    assert "adapter.colour.body.0.weight" in set_trainable(model, "head")  # the adapter always trains


def test_optimising_the_glcm_term_lowers_it():
    torch.manual_seed(0)
    adapter = AssimilationAdapter(1)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(adapter.parameters(), lr=0.01)
    start = glcm_loss(x, adapter(x), levels=8).item()
    for _ in range(30):
        opt.zero_grad()
        glcm_loss(x, adapter(x), levels=8).backward()
        opt.step()
    assert glcm_loss(x, adapter(x), levels=8).item() < 0.5 * start


def test_one_step_of_the_method_updates_adapter_and_backbone():
    model, (x, y) = assimilation_model(), batch(8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = DomainAssimilation().loss(model, x, y)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "adapter.texture.body.0.weight" in changed and "adapter.colour.body.2.weight" in changed
    assert "head.weight" in changed and "features.0.0.weight" in changed


def test_save_load_round_trip_keeps_the_adapter(tmp_path):
    model = assimilation_model(seed=1)
    # move the adapter off its initialisation so the round trip is not trivially equal
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(0.05)
    spec = ModelSpec("small_cnn", 2, width=4, image_size=16, **DomainAssimilation.model_overrides)
    save_model(model, spec, tmp_path)
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec == spec and loaded_spec.adapter == "assimilation"
    assert loaded_spec.mean == IMAGENET_MEAN and loaded_spec.std == IMAGENET_STD
    x, _ = batch()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded.adapter(x), model.adapter(x))


def test_parameters_are_checked():
    assert method_settings("domain_assimilation", {"alpha": 0.9}, "k")["alpha"] == pytest.approx(0.9)
    for bad in ({"weighting": "product"}, {"alpha": 1.5}, {"levels": 1}, {"temperature": 0.0},
                {"metric": "cosine"}, {"luma": "lab"}, {"distance": 0}):
        with pytest.raises(ConfigError, match="domain_assimilation"):
            method_settings("domain_assimilation", bad, "train.methods.domain_assimilation")
    assert DomainAssimilation(alpha=1.5, weighting="additive").alpha == 1.5  # additive: any α ≥ 0
    with pytest.raises(ConfigError, match="train.methods.domain_assimilation.alpha"):
        method_settings("domain_assimilation", {"alpha": "most"}, "train.methods.domain_assimilation")
