"""ARFL (Eqs. 1, 2, 5 of shared/seeds/004) and dual-BN adversarial training (DSBN / AdvProp).

Hand-computed robust losses and objectives, the label invariance of Eq. (1), the sign choice of
Eq. (5), λ = 0 ≡ dual adversarial training, and the batch-norm bookkeeping of DSBN.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.config import ConfigError
from medrobust.training.config import method_settings
from medrobust.defenses import TRAINING_METHODS
from medrobust.defenses.arfl import ARFL, arfl_objective, arfl_robust_loss, signed_labels
from medrobust.defenses.dsbn import DSBN, dsbn_loss
from medrobust.defenses.dual_at import DualAT
from medrobust.models import DualBatchNorm, ModelSpec, build_model, bn_route

LN3, LN7 = math.log(3.0), math.log(7.0)  # σ(ln 3) = 3/4, σ(ln 7) = 7/8


def tiny_model(seed: int = 0, dual_bn: bool = False, num_classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", num_classes, width=4, image_size=16, dual_bn=dual_bn))


def batch(n: int = 8, seed: int = 0, classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


# --------------------------------------------------------------------------------------------------
# Eq. (1): the robust loss
# --------------------------------------------------------------------------------------------------
def test_robust_loss_hand_computed_2x2_feature_map():
    # channel 0: σ(|·|) = [[1/2, 3/4], [3/4, 7/8]] (mean 0.71875); channel 1: zeros, σ = 1/2 everywhere
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0] = torch.tensor([[0.0, LN3], [-LN3, LN7]])
    y = torch.tensor([1.0])
    assert arfl_robust_loss(f[:, :1], y).item() == pytest.approx(-0.71875, rel=1e-6)  # one channel: Eq. 1 as printed
    # channel mean: −(1/HW) Σ_ij (σ_0ij + σ_1ij)/2 = −(0.71875 + 0.5)/2; channel sum: −(0.71875 + 0.5)
    assert arfl_robust_loss(f, y, "mean").item() == pytest.approx(-0.609375, rel=1e-6)
    assert arfl_robust_loss(f, y, "sum").item() == pytest.approx(-1.21875, rel=1e-6)
    # a batch: the mean over samples (second sample: all zeros → −1/2)
    f2 = torch.cat([f, torch.zeros(1, 2, 2, 2)])
    assert arfl_robust_loss(f2, torch.tensor([1.0, -1.0])).item() == pytest.approx((-0.609375 - 0.5) / 2, rel=1e-6)


def test_robust_loss_hand_computed_vectors():
    # [N, D] (the MLP's penultimate layer): the D units are the positions
    f = torch.tensor([[0.0, LN3, -LN7], [LN3, LN3, LN3]])
    expected = (-(0.5 + 0.75 + 0.875) / 3 - 0.75) / 2
    assert arfl_robust_loss(f, torch.tensor([-1.0, 1.0])).item() == pytest.approx(expected, rel=1e-6)
    assert arfl_robust_loss(f, torch.tensor([1.0, 1.0]), "sum").item() == pytest.approx(expected, rel=1e-6)


def test_robust_loss_does_not_depend_on_the_label():
    # |f·y| = |f| for y ∈ {±1}: the loss only sees feature magnitudes
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 3, 4, 4, generator=g)
    values = [arfl_robust_loss(f, y).item() for y in (torch.ones(6), -torch.ones(6),
                                                      torch.tensor([1.0, -1, 1, -1, -1, 1]))]
    assert values[0] == values[1] == values[2]
    assert arfl_robust_loss(f, torch.ones(6)).item() == pytest.approx(-torch.sigmoid(f.abs()).mean().item(), rel=1e-6)
    # minimising it pushes every non-zero feature away from 0 (gradient = −σ'(|f|)·sign(f)/count)
    f.requires_grad_(True)
    (grad,) = torch.autograd.grad(arfl_robust_loss(f, torch.ones(6)), f)
    assert (grad * f.sign() < 0).all()
    # labels: class 0 → −1, others → +1 (more than two classes: the coding does not matter, see above)
    assert signed_labels(torch.tensor([0, 1, 2, 0])).tolist() == [-1.0, 1.0, 1.0, -1.0]


def test_robust_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="±1"):
        arfl_robust_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="features"):
        arfl_robust_loss(torch.zeros(2, 3, 4), torch.ones(2))
    with pytest.raises(ValueError, match="channel_reduction"):
        arfl_robust_loss(torch.zeros(2, 3), torch.ones(2), "max")
    with pytest.raises(ValueError, match="shape"):
        arfl_robust_loss(torch.zeros(2, 3), torch.ones(3))


# --------------------------------------------------------------------------------------------------
# Eq. (2) / (5): the combination and the sign of the adversarial robust term
# --------------------------------------------------------------------------------------------------
def test_objective_hand_computed_with_each_sign():
    ce_c, rob_c, ce_a, rob_a = (torch.tensor(v) for v in (0.7, -0.6, 1.2, -0.55))
    r, lam = 0.25, 2.0
    # r·(0.7 + 2·(−0.6)) = 0.25·(−0.5) = −0.125;  (1 − r)·(1.2 + s·2·(−0.55)) = 0.75·(1.2 − 1.1·s)
    assert arfl_objective(ce_c, rob_c, ce_a, rob_a, r, lam, 1.0).item() == pytest.approx(-0.125 + 0.075)
    assert arfl_objective(ce_c, rob_c, ce_a, rob_a, r, lam, -1.0).item() == pytest.approx(-0.125 + 1.725)
    assert arfl_objective(ce_c, rob_c, ce_a, rob_a, r, lam, 0.0).item() == pytest.approx(-0.125 + 0.9)
    # the ends: r = 1 is L_overall (Eq. 2) alone, r = 0 the adversarial term alone
    assert arfl_objective(ce_c, rob_c, None, None, 1.0, lam).item() == pytest.approx(0.7 - 1.2)
    assert arfl_objective(None, None, ce_a, rob_a, 0.0, lam).item() == pytest.approx(1.2 - 1.1)
    with pytest.raises(ValueError):
        arfl_objective(None, None, ce_a, rob_a, 0.5, lam)


def _manual_arfl(model, x, y, x_adv, r, lam, sign):
    """Eq. (5) written out with the model's parts (the mixed batch as one forward pass)."""
    feats = model.forward_features(torch.cat([x, x_adv]))
    logits = model.head(model.pool(feats))
    fc, fa = feats.split(len(x))
    lc, la = logits.split(len(x))
    rob = lambda f: -torch.sigmoid(f.abs()).mean()  # noqa: E731 — Eq. (1) with the channel mean
    loss = r * (F.cross_entropy(lc, y) + lam * rob(fc)) + (1 - r) * (F.cross_entropy(la, y) + sign * lam * rob(fa))
    return loss, rob(fa)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_arfl_loss_matches_eq5_written_out(sign):
    model, (x, y) = tiny_model(), batch()
    model.eval()
    kw = dict(r=0.5, lam=3.0, eps=8 / 255, steps=2, step_size=4 / 255, seed=0, adv_robust_sign=sign)
    loss, stats = ARFL(**kw).loss(model, x, y)
    x_adv = ARFL(**kw).make_attack(model)(x, y)  # the same first attack seed
    expected, rob_adv = _manual_arfl(model, x, y, x_adv, 0.5, 3.0, sign)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["train_robust_adv"] == pytest.approx(rob_adv.item(), rel=1e-6)
    # the two signs differ by exactly 2·(1 − r)·λ·L_robust(x')
    other = ARFL(**{**kw, "adv_robust_sign": -sign}).loss(model, x, y)[0]
    assert (loss - other).item() == pytest.approx(2 * sign * 0.5 * 3.0 * rob_adv.item(), rel=1e-5)


def test_arfl_on_mlp_features_and_fgsm():
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", 2, in_channels=2, width=10, head="binary"))
    model.eval()
    g = torch.Generator().manual_seed(1)
    x, y = 0.25 + 0.5 * torch.rand(16, 2, generator=g), torch.randint(0, 2, (16,), generator=g)
    loss, stats = ARFL(r=0.5, lam=0.5, attack="fgsm", eps=0.05, seed=0).loss(model, x, y)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x.requires_grad_()), y), x)
    x_adv = torch.clamp(x + 0.05 * grad.sign(), 0, 1)  # FGSM by hand
    expected, _ = _manual_arfl(model, x.detach(), y, x_adv, 0.5, 0.5, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_lambda_zero_is_dual_at(r, training):
    kw = dict(r=r, eps=8 / 255, steps=2, step_size=2 / 255, seed=3)
    (x, y) = batch()
    a_model, b_model = tiny_model(), tiny_model()
    a_model.train(training), b_model.train(training)
    a = ARFL(lam=0.0, **kw).loss(a_model, x, y)[0]
    b = DualAT(**kw).loss(b_model, x, y)[0]
    assert torch.equal(a, b), (a.item(), b.item())
    # and λ > 0 does change it (L_robust < 0)
    assert ARFL(lam=1.0, **kw).loss(tiny_model(), x, y)[0].item() < b.item()


def test_arfl_multiclass_and_validation():
    model, (x, y) = tiny_model(num_classes=3), batch(classes=3)
    loss, stats = ARFL(r=0.5, steps=1, seed=0).loss(model, x, y)
    assert torch.isfinite(loss) and {"train_acc", "train_adv_acc", "train_robust", "train_robust_adv"} <= set(stats)
    for bad in ({"r": 1.5}, {"lam": -1.0}, {"attack": "cw"}, {"norm": "l1"}, {"attack": "fgsm", "norm": "l2"},
                {"channel_reduction": "max"}, {"adv_robust_sign": 0.5}, {"steps": 0}):
        with pytest.raises(ValueError):
            ARFL(**bad)
    d = ARFL()
    assert (d.r, d.lam, d.eps, d.steps, d.adv_robust_sign) == (0.5, 10.0, 0.01, 7, 1.0)
    assert d.step_size == pytest.approx(2.5 * 0.01 / 7)


def test_params_yaml_style_values_are_checked():
    out = method_settings("arfl", {"eps": "8/255", "step_size": None, "adv_robust_sign": -1.0},
                               "train.methods.arfl")
    assert out["eps"] == pytest.approx(8 / 255) and out["step_size"] is None
    with pytest.raises(ConfigError, match="train.methods.arfl"):
        method_settings("arfl", {"adv_robust_sign": 2.0}, "train.methods.arfl")
    with pytest.raises(ConfigError, match="train.methods.dsbn.adv_weight"):
        method_settings("dsbn", {"adv_weight": "x"}, "train.methods.dsbn")


# --------------------------------------------------------------------------------------------------
# the defence contract for one optimisation step
# --------------------------------------------------------------------------------------------------
FAST = {ARFL: {"steps": 2, "seed": 0}, DSBN: {"steps": 2, "seed": 0}}


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
@pytest.mark.parametrize("cls", [ARFL, DSBN], ids=lambda c: c.name)
def test_one_step_contract(cls, training):
    assert TRAINING_METHODS[cls.name] is cls
    model, (x, y) = tiny_model(dual_bn=bool(cls.model_overrides.get("dual_bn"))), batch()
    model.train(training)
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    loss, stats = cls(**FAST[cls]).loss(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # the attack took input gradients only
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)  # seeded: no global RNG
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert "train_adv_acc" in stats and all(math.isfinite(v) for v in stats.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    a = cls(**FAST[cls]).loss(model, x, y)[0].item()
    b = cls(**FAST[cls]).loss(model, x, y)[0].item()
    if not training:
        assert a == b


# --------------------------------------------------------------------------------------------------
# DSBN
# --------------------------------------------------------------------------------------------------
def test_dsbn_loss_hand_computed():
    clean, adv, y = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    assert dsbn_loss(clean, adv, y, 0.5).item() == pytest.approx(-math.log(0.75) + 0.5 * math.log(2.0), rel=1e-6)
    assert dsbn_loss(clean, adv, y, 0.0).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def _first_bn_input(model, x):
    """What the first batch-norm layer sees: conv0(normalize(x))."""
    with torch.no_grad():
        return model.features[0][0](model.normalize(x))


def test_dsbn_step_updates_each_bn_branch_from_its_own_data():
    model = tiny_model(dual_bn=True)
    bn0 = model.features[0][1]
    assert isinstance(bn0, DualBatchNorm)
    with torch.no_grad():  # make the two branches differ, so the attack's route shows in its output
        for m in model.modules():
            if isinstance(m, DualBatchNorm):
                m.adv.running_mean += 0.5
                m.adv.running_var *= 3.0
    x = 0.1 + 0.05 * torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # dark clean batch
    y = torch.tensor([0, 1] * 4)
    reference = copy.deepcopy(model)
    adv_mean0, adv_var0 = bn0.adv.running_mean.clone(), bn0.adv.running_var.clone()
    kw = dict(eps=0.3, steps=3, step_size=0.15, seed=0)

    model.train()
    DSBN(**kw).loss(model, x, y)

    x_adv = DSBN(**kw).perturb(reference, x, y)  # the same attack seed, adversarial route
    with bn_route(reference, "clean"):
        from medrobust.attacks import PGD
        x_adv_clean_route = PGD(reference, eps=0.3, steps=3, step_size=0.15, seed=DSBN(**kw).attack_seed())(x, y)
    assert not torch.allclose(x_adv, x_adv_clean_route)  # the route matters for the attack ...
    assert (x_adv - x).abs().mean() > 0.1  # ... and the adversarial batch is far from the (low-contrast) clean one
    a_clean, a_adv = _first_bn_input(reference, x), _first_bn_input(reference, x_adv)
    dims = (0, 2, 3)
    # momentum 0.1: clean stats start at (0, 1) and saw the clean batch once, and nothing else
    torch.testing.assert_close(bn0.clean.running_mean, 0.1 * a_clean.mean(dims), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn0.clean.running_var, 0.9 + 0.1 * a_clean.var(dims, unbiased=True), rtol=1e-4,
                               atol=1e-6)
    # adversarial stats saw the adversarial batch (made with the adversarial BN) once
    torch.testing.assert_close(bn0.adv.running_mean, 0.9 * adv_mean0 + 0.1 * a_adv.mean(dims), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn0.adv.running_var, 0.9 * adv_var0 + 0.1 * a_adv.var(dims, unbiased=True),
                               rtol=1e-4, atol=1e-6)
    # (which the adversarial batch could not have produced)
    assert not torch.allclose(bn0.clean.running_var, 0.9 + 0.1 * a_adv.var(dims, unbiased=True), rtol=1e-2)
    for m in model.modules():  # every layer: one update per branch (the attack, in eval mode, made none)
        if isinstance(m, DualBatchNorm):
            assert m.clean.num_batches_tracked.item() == 1 and m.adv.num_batches_tracked.item() == 1


def test_dsbn_routes_back_to_clean_and_evaluates_with_the_clean_bn():
    model, (x, y) = tiny_model(dual_bn=True), batch()
    model.train()
    DSBN(steps=2, seed=0).loss(model, x, y)
    assert all(m.route == "clean" for m in model.modules() if isinstance(m, DualBatchNorm))
    model.eval()
    with torch.no_grad():
        out = model(x)
        with bn_route(model, "clean"):
            clean = model(x)
        with bn_route(model, "adv"):
            adv = model(x)
    assert torch.equal(out, clean) and not torch.allclose(out, adv)


def test_dsbn_needs_a_dual_bn_model():
    assert DSBN.model_overrides == {"dual_bn": True}
    (x, y) = batch()
    with pytest.raises(ValueError, match="dual batch-norm"):
        DSBN(steps=1).loss(tiny_model(dual_bn=False), x, y)
    mlp = build_model(ModelSpec("mlp", 2, in_channels=2, width=4))  # no batch norm at all
    with pytest.raises(ValueError, match="dual batch-norm"):
        DSBN(steps=1).loss(mlp, torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    for bad in ({"adv_weight": -1.0}, {"norm": "l1"}, {"steps": 0}):
        with pytest.raises(ValueError):
            DSBN(**bad)
