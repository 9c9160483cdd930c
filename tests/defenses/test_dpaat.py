"""DPAAT (arXiv 2403.06798): per-sample ε from ΔL vs ΔL_avg, the running average, per-sample PGD,
the synchronisation loss, and the defence contract."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.attacks import PGD, PGDL2
from medrobust.config import ConfigError
from medrobust.training.config import method_settings
from medrobust.defenses import TRAINING_METHODS
from medrobust.defenses.dpaat import DPAAT, LossChangeAverage, assign_eps, loss_change, per_sample_pgd, sync_loss
from medrobust.models import ModelSpec, build_model

LN3 = math.log(3.0)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", 2, width=4, image_size=16))


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    x[0, :, :4] = 0.0  # pixels on both edges of [0, 1] exercise the clipping
    x[1, :, :4] = 1.0
    return x, torch.randint(0, 2, (n,), generator=g)


def l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


# --------------------------------------------------------------------------------------------------
# ε assignment and ΔL_avg
# --------------------------------------------------------------------------------------------------
def test_two_level_eps_fragile_smaller_stable_larger():
    dl = torch.tensor([0.2, 1.0, 3.0, -0.5])
    eps = assign_eps(dl, 1.0, eps=0.3, gamma=0.5)
    # ΔL < avg: stable → 0.3·1.5; tie → 0.3; ΔL > avg: fragile → 0.3·0.5; a loss that fell is stable
    assert torch.allclose(eps, torch.tensor([0.45, 0.3, 0.15, 0.45]))
    assert torch.equal(assign_eps(dl, 1.0, 0.3, 0.0), torch.full((4,), 0.3))  # γ = 0: plain AT


def test_ratio_eps_hand_computed():
    dl = torch.tensor([0.5, 1.0, 1.6, 4.0, -0.1])
    # ε·ΔL_avg/ΔL_i = 0.3·[2 → 1.5 (clipped), 1, 0.625, 0.25 → 0.5 (clipped)]; ΔL_i ≤ 0: two-level, stable
    expected = torch.tensor([0.45, 0.3, 0.1875, 0.15, 0.45])
    assert torch.allclose(assign_eps(dl, 1.0, 0.3, 0.5, "ratio"), expected)
    # ΔL_avg ≤ 0: the two-level rule (0.3 > −0.2 fragile, −0.5 < −0.2 stable)
    assert torch.allclose(assign_eps(torch.tensor([0.3, -0.5]), -0.2, 0.3, 0.5, "ratio"), torch.tensor([0.15, 0.45]))
    with pytest.raises(ValueError):
        assign_eps(dl, 1.0, 0.3, 0.5, "linear")


def test_loss_change_average_modes():
    ema = LossChangeAverage("ema", momentum=0.9)
    assert ema.update(torch.tensor([0.5, 1.5])) == pytest.approx(1.0)  # first batch: its mean
    assert ema.update(torch.tensor([2.0])) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)  # 1.1
    assert ema.update(torch.tensor([0.0, 0.0])) == pytest.approx(0.9 * 1.1)  # 0.99
    cum = LossChangeAverage("cumulative")
    assert cum.update(torch.tensor([1.0, 1.0])) == pytest.approx(1.0)
    assert cum.update(torch.tensor([4.0])) == pytest.approx(2.0)  # (1 + 1 + 4) / 3
    assert cum.update(torch.zeros(3)) == pytest.approx(1.0)  # 6 / 6
    assert cum.count == 6
    per_batch = LossChangeAverage("batch")
    per_batch.update(torch.tensor([1.0, 3.0]))
    assert per_batch.update(torch.tensor([4.0])) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        LossChangeAverage("median")
    with pytest.raises(ValueError):
        LossChangeAverage("ema", momentum=1.0)


# --------------------------------------------------------------------------------------------------
# L_syn
# --------------------------------------------------------------------------------------------------
def test_sync_loss_hand_computed_and_symmetric():
    # softmax([0, 0]) = [1/2, 1/2]; softmax([ln 3, 0]) = [3/4, 1/4]
    ori, adv = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert sync_loss(ori, adv).item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-6)
    sym_ce = -0.5 * (0.5 * math.log(0.75) + 0.5 * math.log(0.25) + 0.75 * math.log(0.5) + 0.25 * math.log(0.5))
    assert sync_loss(ori, adv, "sym_ce").item() == pytest.approx(sym_ce, rel=1e-6)
    # batch mean over samples; symmetric in its arguments; zero (sym_kl) for identical logits
    two_ori, two_adv = torch.cat([ori, adv]), torch.cat([adv, adv])
    assert sync_loss(two_ori, two_adv).item() == pytest.approx(0.25 * (kl_pq + kl_qp), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for kind in ("sym_kl", "sym_ce"):
        assert sync_loss(a, b, kind).item() == pytest.approx(sync_loss(b, a, kind).item(), rel=1e-6)
    assert sync_loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        sync_loss(a, b, "mse")


# --------------------------------------------------------------------------------------------------
# per-sample PGD
# --------------------------------------------------------------------------------------------------
def test_per_sample_pgd_respects_each_radius_l2_and_linf():
    model, (x, y) = tiny_model(), batch()
    eps_l2 = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0, 2.0])
    adv = per_sample_pgd(model, x, y, eps_l2, steps=5, step_size=eps_l2, norm="l2",
                         generator=torch.Generator().manual_seed(0))
    norms = l2(adv - x)
    assert torch.all(norms <= eps_l2 + 1e-5) and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv[0], x[0])  # ε = 0: untouched
    assert torch.all(norms[1:] > 0.5 * eps_l2[1:])  # step = ε: every other sample goes well out
    eps_inf = torch.tensor([0.0, 1, 2, 4, 8, 16]) / 255
    adv = per_sample_pgd(model, x, y, eps_inf, steps=3, step_size=eps_inf, norm="linf",
                         generator=torch.Generator().manual_seed(0))
    linf = (adv - x).flatten(1).abs().max(1).values
    assert torch.all(linf <= eps_inf + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv[0], x[0])
    assert torch.allclose(linf[2:], eps_inf[2:], atol=1e-6)  # sign steps of ε land on the faces


@pytest.mark.parametrize("random_start", [True, False])
def test_equal_eps_matches_the_library_attacks(random_start):
    model, (x, y) = tiny_model(), batch()
    ours = per_sample_pgd(model, x, y, 0.5, 4, 0.2, "l2", random_start, torch.Generator().manual_seed(7))
    ref = PGDL2(model, eps=0.5, steps=4, step_size=0.2, random_start=random_start, seed=7)(x, y)
    assert torch.equal(ours, ref)  # same random draws, same order of operations: bit-identical
    assert not torch.equal(ours, x)
    ours = per_sample_pgd(model, x, y, torch.full((6,), 8 / 255), 4, 2 / 255, "linf", random_start,
                          torch.Generator().manual_seed(7))
    ref = PGD(model, eps=8 / 255, steps=4, step_size=2 / 255, random_start=random_start, seed=7)(x, y)
    assert torch.equal(ours, ref)


def test_each_sample_gets_the_attack_of_its_own_radius():
    # eval mode: samples do not interact, so sample i's trajectory is PGD-L2 at ε_i run on it alone
    model, (x, y) = tiny_model(), batch(4)
    eps = torch.tensor([0.1, 0.3, 0.6, 1.2])
    adv = per_sample_pgd(model, x, y, eps, 3, eps / 2, "l2", random_start=False)
    for i in range(4):
        ref = PGDL2(model, eps=float(eps[i]), steps=3, step_size=float(eps[i]) / 2, random_start=False)(
            x[i : i + 1], y[i : i + 1])
        assert torch.allclose(adv[i : i + 1], ref, atol=1e-6), i


# --------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------
def test_probe_loss_change_and_eps_assignment():
    model, (x, y) = tiny_model(), batch()
    model.eval()
    d = DPAAT(seed=0)  # L2, ε = 0.3, probe: one step of min(0.3, 0.15·7) = 0.3 from x
    eps_i, dl = d.sample_eps(model, x, y)
    # the probe by hand: x + 0.3·∇/‖∇‖ (the gradient of the mean CE), scaled into the ball, clipped
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    step = 0.3 * grad / (l2(grad).view(-1, 1, 1, 1) + 1e-10)
    x_probe = torch.clamp(x + step * torch.clamp(0.3 / l2(step), max=1.0).view(-1, 1, 1, 1), 0, 1)
    with torch.no_grad():
        expected = F.cross_entropy(model(x_probe), y, reduction="none") - F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(dl, expected, atol=1e-5)
    assert torch.allclose(dl, loss_change(model, x, y, x_probe), atol=1e-6)
    # first batch: ΔL_avg is its mean; fragile (ΔL > mean) → 0.15, stable → 0.45
    assert d.dl_avg.value == pytest.approx(dl.mean().item(), rel=1e-6)
    assert torch.allclose(eps_i, torch.where(dl > dl.mean(), 0.15, 0.45))
    assert 0 < (eps_i < 0.3).sum() < len(x)  # both kinds occur in this batch
    # the EMA carries over to the next batch: 0.9·A₁ + 0.1·mean(ΔL₂)
    x2, y2 = batch(seed=1)
    _, dl2 = d.sample_eps(model, x2, y2)
    assert d.dl_avg.value == pytest.approx(0.9 * dl.mean().item() + 0.1 * dl2.mean().item(), rel=1e-5)


def test_gamma_zero_without_syn_is_pgd_l2_training():
    model, (x, y) = tiny_model(), batch()
    model.eval()
    loss, stats = DPAAT(gamma=0.0, syn_weight=0.0, steps=3, seed=5).loss(model, x, y)
    x_adv = PGDL2(model, eps=0.3, steps=3, step_size=0.15, seed=5)(x, y)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), rel=1e-5)
    assert stats["train_eps_mean"] == pytest.approx(0.3) and stats["train_fragile"] == 0.0
    assert "train_syn" not in stats and "train_acc" not in stats


@pytest.mark.parametrize("cls_on", ["adv", "clean", "both"])
def test_loss_composition(cls_on):
    model, (x, y) = tiny_model(), batch()
    model.eval()  # one concatenated forward equals two separate ones
    loss, stats = DPAAT(gamma=0.0, syn_weight=2.0, cls_on=cls_on, steps=2, seed=3).loss(model, x, y)
    x_adv = PGDL2(model, eps=0.3, steps=2, step_size=0.15, seed=3)(x, y)
    with torch.no_grad():
        ori, adv = model(x), model(x_adv)
    ce = {"adv": F.cross_entropy(adv, y), "clean": F.cross_entropy(ori, y)}
    ce["both"] = 0.5 * (ce["adv"] + ce["clean"])
    syn = sync_loss(ori, adv)
    assert syn.item() > 0 and stats["train_syn"] == pytest.approx(syn.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ce[cls_on] + 2.0 * syn).item(), rel=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_one_step_contract(training, norm):
    model, (x, y) = tiny_model(), batch()
    model.train(training)
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.zero_grad(set_to_none=True)
    params = {"steps": 2, "seed": 0} if norm == "l2" else {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255,
                                                          "steps": 2, "seed": 0}
    d = DPAAT(**params)
    d.start_epoch(0, 1)
    loss, stats = d.loss(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # probe and attack: input gradients only
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)  # seeded: the global RNG is not used
    if not training:
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert {"train_adv_acc", "train_acc", "train_syn", "train_eps_mean", "train_fragile"} <= set(stats)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_seeded_loss_is_reproducible():
    model, (x, y) = tiny_model(), batch()
    model.eval()
    a = DPAAT(steps=2, seed=0).loss(model, x, y)[0].item()
    b = DPAAT(steps=2, seed=0).loss(model, x, y)[0].item()
    assert a == b


def test_defaults_registry_and_config():
    assert TRAINING_METHODS["dpaat"] is DPAAT
    defaults = {k: p.default for k, p in inspect.signature(DPAAT.__init__).parameters.items() if k != "self"}
    d = DPAAT(**defaults)
    assert (d.norm, d.eps, d.steps, d.step_size) == ("l2", 0.3, 7, 0.15)  # the paper's PGD
    assert d.probe_step_size() == pytest.approx(0.3)
    assert DPAAT(probe_steps=7).probe_step_size() == pytest.approx(0.15)
    out = method_settings("dpaat", {"norm": "linf", "eps": "8/255", "step_size": "2/255"}, "train.methods.dpaat")
    assert out["eps"] == pytest.approx(8 / 255) and out["step_size"] == pytest.approx(2 / 255)
    for bad in ({"gamma": 1.5}, {"norm": "l1"}, {"avg": "median"}, {"schedule": "x"}, {"syn": "mse"},
                {"cls_on": "none"}, {"probe_steps": 0}, {"avg_momentum": 1.0}, {"eps": -0.1}):
        with pytest.raises(ConfigError, match="train.methods.dpaat"):
            method_settings("dpaat", bad, "train.methods.dpaat")
