"""AugMix augmentation, the Jensen–Shannon consistency, and the augmix / robust_augmix / rtda methods.

Hand-computed divergences and losses, augmentation invariants, the per-modality ε, and the defence
contract for one optimisation step.
"""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.attacks.pgdl2 import l2_norms
from medrobust.defenses import TRAINING_METHODS, get_method
from medrobust.defenses.augment import DEFAULT_OPS, apply_op, augmix, parse_ops
from medrobust.defenses.augmix import AugMix, RobustAugMix, augmix_loss, jsd, robust_augmix_loss
from medrobust.defenses.rtda import RTDA, rtda_loss
from medrobust.models import ModelSpec, build_model

LN2, LN3 = math.log(2.0), math.log(3.0)
BIG = 1000.0  # float64 softmax([0, -1000]) is exactly [1, 0]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", 2, width=4, image_size=16))


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    x[0, :, :4] = 0.0
    x[1, :, :4] = 1.0
    return x, torch.randint(0, 2, (n,), generator=g)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Jensen–Shannon divergence
# --------------------------------------------------------------------------------------------------
def test_jsd_hand_computed_three_distributions():
    # p1 = [1, 0], p2 = [0, 1], p3 = [1/2, 1/2]: mixture [1/2, 1/2];
    # KL(p1‖M) = KL(p2‖M) = ln 2, KL(p3‖M) = 0  ->  JSD = 2 ln 2 / 3
    p1 = torch.tensor([[0.0, -BIG]], dtype=torch.float64)
    p2 = torch.tensor([[-BIG, 0.0]], dtype=torch.float64)
    p3 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert jsd(p1, p2, p3).item() == pytest.approx(2 * LN2 / 3, rel=1e-12)
    # two disjoint distributions reach the 2-point maximum ln 2; three one-hots on 3 classes reach ln 3
    assert jsd(p1, p2).item() == pytest.approx(LN2, rel=1e-12)
    e = torch.full((3, 1, 3), -BIG, dtype=torch.float64)
    for i in range(3):
        e[i, 0, i] = 0.0
    assert jsd(e[0], e[1], e[2]).item() == pytest.approx(LN3, rel=1e-12)
    # softer distributions: [1/2, 1/2], [3/4, 1/4], [1/4, 3/4] -> mixture [1/2, 1/2]
    a, b, c = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, LN3]])
    expected = 2 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 3
    assert jsd(a, b, c).item() == pytest.approx(expected, rel=1e-6)


def test_jsd_batchmean_identity_symmetry_bounds():
    g = gen(0)
    z = [torch.randn(6, 4, generator=g) * 3 for _ in range(3)]
    value = jsd(*z).item()
    # batchmean: the mean of the per-sample divergences
    per_sample = [jsd(*(t[i : i + 1] for t in z)).item() for i in range(6)]
    assert value == pytest.approx(sum(per_sample) / 6, rel=1e-5)
    assert jsd(z[0], z[0].clone(), z[0] + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # same softmax
    for perm in itertools.permutations(range(3)):
        assert jsd(*(z[i] for i in perm)).item() == pytest.approx(value, rel=1e-6)
    for s in range(20):
        g = gen(s)
        zz = [torch.randn(5, 3, generator=g) * 10 for _ in range(3)]
        assert 0.0 < jsd(*zz).item() <= LN3 + 1e-6
    with pytest.raises(ValueError):
        jsd(z[0])


def test_jsd_stays_finite_on_extreme_logits():
    a = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    b = torch.tensor([[-200.0, 200.0, 0.0]], requires_grad=True)
    c = torch.tensor([[0.0, 0.0, 200.0]], requires_grad=True)
    value = jsd(a, b, c)
    value.backward()
    assert value.item() == pytest.approx(LN3, rel=1e-5)
    assert all(torch.isfinite(t.grad).all() for t in (a, b, c))


# --------------------------------------------------------------------------------------------------
# hand-computed losses
# --------------------------------------------------------------------------------------------------
CLEAN, AUG, ADV = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, LN3]])
Y0 = torch.tensor([0])
JSD_HAND = 2 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 3


def test_loss_combinations_hand_computed():
    # y = 0: CE(clean [1/2, 1/2]) = ln 2; CE(adv [1/4, 3/4]) = ln 4
    assert augmix_loss(CLEAN, AUG, ADV, Y0, 12.0).item() == pytest.approx(LN2 + 12 * JSD_HAND, rel=1e-6)
    assert robust_augmix_loss(CLEAN, AUG, ADV, Y0, 12.0).item() == pytest.approx(LN2 + 12 * JSD_HAND, rel=1e-6)
    assert rtda_loss(CLEAN, AUG, ADV, Y0, 12.0).item() == pytest.approx(math.log(4.0) + 12 * JSD_HAND, rel=1e-6)
    assert rtda_loss(CLEAN, AUG, ADV, Y0, 0.0).item() == pytest.approx(math.log(4.0), rel=1e-6)
    # the consistency term does not depend on which of the three batches is which
    assert rtda_loss(CLEAN, AUG, ADV, Y0, 1.0).item() - math.log(4.0) == pytest.approx(
        jsd(ADV, AUG, CLEAN).item(), rel=1e-6)
    # with λ = 0 each method is its cross-entropy alone
    assert robust_augmix_loss(CLEAN, AUG, ADV, Y0, 0.0).item() == pytest.approx(LN2, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------
def test_augmix_deterministic_changes_image_keeps_range_shape_dtype():
    x, _ = batch()
    a, b = augmix(x, gen(3)), augmix(x, gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, augmix(x, gen(4)))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert a.min() >= 0 and a.max() <= 1
    per_sample = (a - x).abs().flatten(1).mean(1)
    # m ~ Beta(1, 1) can be close to 1 for an image (x_aug ≈ x), so "most", not "all"
    assert (per_sample > 1e-3).float().mean() >= 0.75, per_sample
    assert (a - x).abs().mean() > 0.01
    x64 = x.double()
    assert augmix(x64, gen(3)).dtype == torch.float64
    # the input is untouched and the generator advances (a second call differs)
    g = gen(5)
    first, second = augmix(x, g), augmix(x, g)
    assert not torch.equal(first, second)
    assert torch.equal(x, batch()[0])


def test_augmix_per_sample_randomness_and_global_rng():
    x = batch()[0][2:3].repeat(6, 1, 1, 1)  # six copies of one image get six different augmentations
    out = augmix(x, gen(0))
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) == 6
    torch.manual_seed(11)
    a = augmix(x)
    torch.manual_seed(11)
    assert torch.equal(a, augmix(x))  # without a generator: the global torch RNG


def test_augmix_is_a_convex_mix_of_chains():
    # a full-range image is a fixed point of autocontrast: every chain is the identity, so is the mix
    x = torch.rand(4, 1, 16, 16, generator=gen(1))
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    out = augmix(x, gen(2), ops="autocontrast", severity=10)
    assert torch.allclose(out, x, atol=1e-6)
    # brightness chains scale every pixel: the output is a per-image multiple of x, between the extremes
    x = torch.rand(4, 1, 16, 16, generator=gen(1)) * 0.5
    out = augmix(x, gen(2), ops=["brightness"], depth=1, severity=10)
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert (ratio >= 0.1 - 1e-6).all() and (ratio <= 1.9 + 1e-6).all()


def test_augmix_validation():
    x = batch()[0]
    with pytest.raises(ValueError):
        augmix(x, gen(0), severity=0)
    with pytest.raises(ValueError):
        augmix(x, gen(0), severity=11)
    with pytest.raises(ValueError):
        augmix(x, gen(0), width=0)
    with pytest.raises(ValueError):
        augmix(x, gen(0), ops="solarize")
    with pytest.raises(ValueError):
        augmix(x[0], gen(0))
    assert parse_ops("") == DEFAULT_OPS and parse_ops(" contrast, gamma ") == ("contrast", "gamma")
    assert "contrast" in DEFAULT_OPS and "solarize" not in DEFAULT_OPS


def test_contrast_op_lowers_and_raises_std():
    x = 0.25 + 0.5 * torch.rand(3, 1, 16, 16, generator=gen(0))  # in [0.25, 0.75]: no clipping below
    x_mid = 0.4 + 0.2 * (x - 0.25) / 0.5  # in [0.4, 0.6]: no clipping after a 1.45× stretch
    lower = apply_op("contrast", x, level=5.0, sign=-1.0)  # factor 1 - 0.45 = 0.55
    higher = apply_op("contrast", x_mid, level=5.0, sign=1.0)  # factor 1.45
    std = lambda t: t.flatten(1).std(1)  # noqa: E731
    assert torch.allclose(std(lower), 0.55 * std(x), rtol=1e-5)
    assert torch.allclose(std(higher), 1.45 * std(x_mid), rtol=1e-5)
    # the mean is kept
    assert torch.allclose(lower.flatten(1).mean(1), x.flatten(1).mean(1), atol=1e-6)
    # level 10 down: factor 0.1
    assert torch.allclose(std(apply_op("contrast", x, 10.0, -1.0)), 0.1 * std(x), rtol=1e-4)


@pytest.mark.parametrize("op", DEFAULT_OPS)
def test_every_op_keeps_range_shape_and_changes_image(op):
    x = 0.1 + 0.6 * torch.rand(3, 1, 16, 16, generator=gen(0))
    out = apply_op(op, x, level=6.0, sign=1.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 1e-3, op


def test_op_parameters_follow_augmix_maps():
    x = torch.rand(2, 1, 16, 16, generator=gen(0))
    # translate_x at level 4 on a 16-pixel side: floor(16/3 · 0.4) = 2 pixels, zero fill
    t = apply_op("translate_x", x, 4.0, 1.0)
    assert torch.allclose(t[..., :-2], x[..., 2:], atol=1e-6) and (t[..., -2:] == 0).all()
    t = apply_op("translate_y", x, 4.0, -1.0)
    assert torch.allclose(t[..., 2:, :], x[..., :-2, :], atol=1e-6) and (t[..., :2, :] == 0).all()
    # rotate by floor(30 · level/10) degrees: level 3 -> 9°, level 0.2 -> 0° (identity)
    assert torch.allclose(apply_op("rotate", x, 0.2, 1.0), x, atol=1e-5)
    # ±90° (level 30 is outside the sampling range, but the map is the same) is rot90 either way
    assert torch.allclose(apply_op("rotate", x, 30.0, 1.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(apply_op("rotate", x, 30.0, -1.0), torch.rot90(x, -1, (-2, -1)), atol=1e-5)
    # posterize at level 5: 4 - floor(2) = 2 bits -> values in {0, 64, 128, 192} / 255
    p = apply_op("posterize", x, 5.0)
    assert set(torch.round(p * 255).unique().tolist()) <= {0.0, 64.0, 128.0, 192.0}
    # posterize at level 10 keeps one bit (AugMix's map would give 0 bits: a black image)
    assert set(torch.round(apply_op("posterize", x, 10.0) * 255).unique().tolist()) == {0.0, 128.0}
    # gamma: x ** (1 + level/10)^sign
    assert torch.allclose(apply_op("gamma", x, 5.0, 1.0), x ** 1.5, atol=1e-6)
    assert torch.allclose(apply_op("gamma", x, 5.0, -1.0), x ** (1 / 1.5), atol=1e-6)
    # brightness: f·x with f = 1 - 0.9·level/10
    assert torch.allclose(apply_op("brightness", x, 10.0, -1.0), 0.1 * x, atol=1e-6)
    # autocontrast stretches each image to [0, 1]; equalize spreads a narrow histogram
    narrow = 0.4 + 0.1 * x
    ac = apply_op("autocontrast", narrow, 1.0)
    assert torch.allclose(ac.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(ac.amax(dim=(1, 2, 3)), torch.ones(2))
    narrow32 = 0.4 + 0.1 * torch.rand(2, 1, 32, 32, generator=gen(1))  # PIL's equalize needs > 255 pixels
    eq = apply_op("equalize", narrow32, 1.0)
    assert eq.amax() > 0.95 and eq.amin() < 0.05
    # sharpness keeps the 1-pixel border and a constant image
    s = apply_op("sharpness", x, 8.0, 1.0)
    assert torch.equal(s[..., 0, :], x[..., 0, :]) and torch.equal(s[..., :, -1], x[..., :, -1])
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(apply_op("sharpness", flat, 8.0, 1.0), flat, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# ε per modality
# --------------------------------------------------------------------------------------------------
def test_eps_by_modality_picks_the_right_eps(caplog):
    model, (x, y) = tiny_model(), batch()
    d = RTDA(eps=0.5, eps_by_modality={"MG": 0.15, "CR": 2.0}, seed=0)
    with caplog.at_level(logging.INFO, logger="medrobust.defenses.augmix"):
        d.prepare(model, x, y, modality="MG")
    assert d.active_eps == pytest.approx(0.15)
    assert "MG" in caplog.text and "0.15" in caplog.text
    d.prepare(model, x, y, modality="CR")
    assert d.active_eps == pytest.approx(2.0)
    d.prepare(model, x, y, modality="cr")  # DICOM codes are upper case; matched case-insensitively
    assert d.active_eps == pytest.approx(2.0)
    for unknown in ("US", "default", ""):
        d.prepare(model, x, y, modality=unknown)
        assert d.active_eps == pytest.approx(0.5), unknown
    # the defaults are the paper's table
    assert RTDA().eps_by_modality == {"MG": 0.15, "CR": 2.0, "DX": 2.0}
    # L2 rescaling from a reference size: 16×16 images, reference 32 -> × 16/32
    r = RTDA(eps=0.5, eps_by_modality={"MG": 0.15}, eps_reference_size=32)
    assert r.resolve_eps("MG", x.shape) == pytest.approx(0.075)
    assert r.resolve_eps("US", (1, 1, 64, 64)) == pytest.approx(1.0)
    assert RTDA(eps_reference_size=16).resolve_eps("MG", x.shape) == pytest.approx(0.15)
    # L∞ budgets are per pixel: never rescaled
    assert RTDA(norm="linf", eps=8 / 255, eps_by_modality={}, eps_reference_size=32).resolve_eps(
        "MG", x.shape) == pytest.approx(8 / 255)


def test_adversarial_view_respects_the_modality_eps():
    model, (x, y) = tiny_model(), batch()
    for modality, eps in (("MG", 0.15), ("CR", 2.0)):
        d = RTDA(eps=0.5, steps=3, seed=0)
        d.prepare(model, x, y, modality=modality)
        x_aug, x_adv = d.make_views(model, x, y)
        norms = l2_norms(x_adv - x).flatten()
        assert (norms <= eps + 1e-4).all() and norms.max() > 0.5 * eps, (modality, norms)
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and x_aug.min() >= 0 and x_aug.max() <= 1


# --------------------------------------------------------------------------------------------------
# the three methods
# --------------------------------------------------------------------------------------------------
def test_rtda_puts_the_ce_on_the_adversarial_batch():
    model, (x, y) = tiny_model(), batch()
    model.eval()  # BN in eval mode: one concatenated pass equals separate passes
    params = {"steps": 2, "seed": 5, "eps_by_modality": {}, "eps": 1.0}
    x_aug, x_adv = RTDA(**params).make_views(model, x, y)  # the views a fresh seed-5 method will draw
    with torch.no_grad():
        clean, aug, adv = model(x), model(x_aug), model(x_adv)
        expected_rtda = rtda_loss(clean, aug, adv, y, 12.0).item()
        expected_robust = robust_augmix_loss(clean, aug, adv, y, 12.0).item()
        ce_gap = (F.cross_entropy(adv, y) - F.cross_entropy(clean, y)).item()
    loss_rtda, stats = RTDA(**params).loss(model, x, y)
    loss_robust, _ = RobustAugMix(**params).loss(model, x, y)
    assert loss_rtda.item() == pytest.approx(expected_rtda, rel=1e-5)
    assert loss_robust.item() == pytest.approx(expected_robust, rel=1e-5)
    assert loss_rtda.item() - loss_robust.item() == pytest.approx(ce_gap, abs=1e-5)
    assert abs(ce_gap) > 1e-3  # the attack moved the CE: the two methods really differ
    assert stats["train_eps"] == pytest.approx(1.0)
    assert stats["train_adv_acc"] == pytest.approx((adv.argmax(1) == y).float().mean().item())
    # separate forward passes give the same numbers in eval mode
    loss_sep, _ = RTDA(**params, joint_batch=False).loss(model, x, y)
    assert loss_sep.item() == pytest.approx(expected_rtda, rel=1e-5)


def test_augmix_method_uses_two_views():
    model, (x, y) = tiny_model(), batch()
    model.eval()
    a1, a2 = AugMix(seed=2).make_views(x)
    assert not torch.equal(a1, a2)
    with torch.no_grad():
        expected = augmix_loss(model(x), model(a1), model(a2), y, 12.0).item()
    loss, stats = AugMix(seed=2).loss(model, x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(stats) == {"train_acc", "train_aug_acc", "train_jsd"}


FAST = {
    AugMix: {"seed": 0},
    RobustAugMix: {"steps": 2, "seed": 0},
    RTDA: {"steps": 2, "seed": 0},
}


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
@pytest.mark.parametrize("cls", list(FAST), ids=lambda c: c.name)
def test_one_step_contract(cls, training):
    model, (x, y) = tiny_model(), batch()
    model.train(training)
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    defense = cls(**FAST[cls])
    defense.prepare(model, x, y, modality="MG")
    defense.start_epoch(0, 1)
    loss, stats = defense.loss(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)  # seeded: the global RNG is untouched
    if not training:
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert 0.0 <= stats["train_jsd"] <= LN3
    if cls is not AugMix:
        assert "train_adv_acc" in stats
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # seeded: the same loss again
    model.eval()
    assert cls(**FAST[cls]).loss(model, x, y)[0].item() == cls(**FAST[cls]).loss(model, x, y)[0].item()


def test_registry_defaults_and_validation():
    for name, cls in (("augmix", AugMix), ("robust_augmix", RobustAugMix), ("rtda", RTDA)):
        assert TRAINING_METHODS[name] is cls
        d = get_method(name, seed=3)
        assert d.seed == 3 and d.jsd_weight == 12.0 and d.severity == 3 and d.width == 3 and d.depth == -1
    r = RTDA()
    assert r.norm == "l2" and r.steps == 7 and r.step_size is None and r.eps == 0.5
    for bad in ({"jsd_weight": -1.0}, {"norm": "l1"}, {"eps": -0.1}, {"eps_by_modality": {"MG": -1.0}},
                {"steps": 0}, {"step_size": 0.0}, {"severity": 11}, {"ops": "solarize"}, {"eps_reference_size": -1}):
        with pytest.raises(ValueError):
            RTDA(**bad)
    with pytest.raises(ValueError):
        AugMix(width=0)


def test_params_yaml_sections_parse():
    from medrobust.training.config import method_settings

    out = method_settings("rtda", {"eps_by_modality": {"MG": "0.15", "CR": 2}, "step_size": "1/10",
                                        "eps_reference_size": 224}, "train.methods.rtda")
    assert out["eps_by_modality"] == {"MG": 0.15, "CR": 2.0} and out["step_size"] == pytest.approx(0.1)
    assert method_settings("augmix", {"ops": "contrast,gamma", "mix_alpha": 0.5}, "k")["ops"] == "contrast,gamma"
