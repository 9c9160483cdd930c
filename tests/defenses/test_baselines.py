"""The baseline training methods: TRADES, MART, dual adversarial training (ARFL Eq. 4), fast AT.

Hand-computed losses, the defence contract for one optimisation step, and a short training run.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.attacks import PGD
from medrobust.training import OptimConfig
from medrobust.data.shards import ArraySplit
from medrobust.defenses.dual_at import DualAT, dual_loss
from medrobust.defenses.fast_at import FastAT, fast_at_perturbation
from medrobust.defenses.mart import MART, mart_loss
from medrobust.defenses.standard import Standard
from medrobust.defenses.trades import TRADES, trades_kl
from medrobust.models import ModelSpec, build_model
from medrobust.models import accuracy
from medrobust.training import train_model
from tests.conftest import toy_task

EPS = 8 / 255
LN3 = math.log(3.0)


def tiny_model(seed: int = 0, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", 2, width=width, image_size=16))


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g)
    x[0, :, :4] = 0.0  # pixels on both edges of [0, 1] exercise the clipping
    x[1, :, :4] = 1.0
    return x, torch.randint(0, 2, (n,), generator=g)


# --------------------------------------------------------------------------------------------------
# hand-computed losses
# --------------------------------------------------------------------------------------------------
def test_trades_kl_hand_computed():
    # clean: softmax([0, 0]) = [1/2, 1/2], softmax([ln 3, 0]) = [3/4, 1/4]; adversarial: the other way round
    clean = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    adv = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    kl_1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_2 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = (kl_1 + kl_2) / 2  # batchmean: sum over classes, mean over the 2 samples
    assert trades_kl(clean, adv).item() == pytest.approx(expected, rel=1e-6)
    # also with softmax written out by exp for arbitrary logits
    a, b = torch.tensor([[1.3, -0.4]]), torch.tensor([[-0.2, 0.9]])
    p = [math.exp(1.3) / (math.exp(1.3) + math.exp(-0.4)), math.exp(-0.4) / (math.exp(1.3) + math.exp(-0.4))]
    q = [math.exp(-0.2) / (math.exp(-0.2) + math.exp(0.9)), math.exp(0.9) / (math.exp(-0.2) + math.exp(0.9))]
    assert trades_kl(a, b).item() == pytest.approx(sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)), rel=1e-5)


def test_trades_kl_zero_for_identical_inputs_and_nonnegative():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert trades_kl(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert trades_kl(logits, logits.flip(0)).item() > 0


def test_mart_loss_hand_computed():
    beta = 6.0
    # sample 1 (y = 1): p(x') = [1/2, 1/4, 1/4], p(x) = [1/4, 1/4, 1/2]
    #   BCE = -ln(1/4) - ln(1 - 1/2) = ln 8;  KL(p(x) ‖ p(x')) = 1/4 ln(1/2) + 1/4 ln 1 + 1/2 ln 2 = 1/4 ln 2
    #   weight 1 - p_y(x) = 3/4
    # sample 2 (y = 0): p(x) = p(x') = [3/5, 1/5, 1/5]: BCE = -ln(3/5) - ln(1 - 1/5), KL = 0
    clean = torch.tensor([[0.0, 0.0, math.log(2.0)], [LN3, 0.0, 0.0]])
    adv = torch.tensor([[math.log(2.0), 0.0, 0.0], [LN3, 0.0, 0.0]])
    y = torch.tensor([1, 0])
    loss_1 = math.log(8.0) + beta * (0.25 * math.log(0.5) + 0.5 * math.log(2.0)) * 0.75
    loss_2 = -math.log(0.6) - math.log(0.8)
    assert mart_loss(clean, adv, y, beta).item() == pytest.approx((loss_1 + loss_2) / 2, rel=1e-6)
    # beta = 0 leaves the boosted cross-entropy only
    assert mart_loss(clean, adv, y, 0.0).item() == pytest.approx((math.log(8.0) + loss_2) / 2, rel=1e-6)


def test_mart_loss_two_classes_and_extreme_logits():
    # with 2 classes, 1 - max_{k≠y} p_k = p_y, so BCE = -2 ln p_y
    logits = torch.tensor([[0.0, LN3]])  # p = [1/4, 3/4]
    assert mart_loss(logits, logits, torch.tensor([0]), 6.0).item() == pytest.approx(-2 * math.log(0.25), rel=1e-6)
    # a confidently wrong adversarial prediction stays finite (no log(0)), and so does its gradient
    clean = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[-60.0, 60.0, 0.0]], requires_grad=True)
    loss = mart_loss(clean, adv, torch.tensor([0]), 6.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(clean.grad).all() and torch.isfinite(adv.grad).all()


def test_dual_loss_follows_arfl_eq4():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    ce_clean, ce_adv = F.cross_entropy(clean, y).item(), F.cross_entropy(adv, y).item()
    # Eq. 4: (1 - r)·max L(x + δ) + r·L(x) — r is the share of *standard* data
    assert dual_loss(clean, adv, y, 1.0).item() == pytest.approx(ce_clean, rel=1e-6)
    assert dual_loss(clean, adv, y, 0.0).item() == pytest.approx(ce_adv, rel=1e-6)
    for r in (0.25, 0.5, 0.75):
        assert dual_loss(clean, adv, y, r).item() == pytest.approx(r * ce_clean + (1 - r) * ce_adv, rel=1e-6)


def test_dual_at_ends_are_standard_training():
    model, (x, y) = tiny_model(), batch()
    model.eval()  # no BN updates: the two losses see the same model
    loss, _ = DualAT(r=1.0).loss(model, x, y)
    assert loss.item() == pytest.approx(Standard().loss(model, x, y)[0].item(), rel=1e-6)


def test_fast_at_perturbation_budget_range_determinism():
    model, (x, y) = tiny_model(), batch()
    model.train()
    for p in model.parameters():
        p.grad = None
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(seed: int, alpha: float = 1.25 * EPS) -> torch.Tensor:
        return fast_at_perturbation(model, x, y, EPS, alpha, torch.Generator().manual_seed(seed))

    adv = run(3)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert torch.equal(adv, run(3))
    assert not torch.equal(adv, run(4))
    # model mode, parameter grads and BN statistics untouched
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # with α ≥ 2ε the step dominates the random init: δ lands on the ±ε faces (away from the clip)
    big = run(3, alpha=2.5 * EPS)
    inside = (x > EPS) & (x < 1 - EPS)
    on_face = ((big - x).abs() - EPS).abs() < 1e-6
    assert on_face[inside].float().mean() > 0.9


def test_trades_inner_maximisation_increases_kl():
    from medrobust.defenses.trades import trades_perturbation

    model, (x, _) = tiny_model(), batch()
    model.eval()
    x_adv = trades_perturbation(model, x, EPS, 10, 2 / 255, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = model(x)
        noise = torch.clamp(x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), 0, 1)
        assert trades_kl(clean, model(x_adv)) > 10 * trades_kl(clean, model(noise))


# --------------------------------------------------------------------------------------------------
# the defence contract: one optimisation step for every method
# --------------------------------------------------------------------------------------------------
FAST_PARAMS = {
    TRADES: {"steps": 2, "seed": 0},
    MART: {"steps": 2, "seed": 0},
    DualAT: {"steps": 2, "seed": 0},
    FastAT: {"seed": 0},
}
METHODS = list(FAST_PARAMS)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_defaults_construct_from_kwargs(cls):
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    d = cls(**defaults)
    assert d.name in {"trades", "mart", "dual_at", "fast_at"}
    assert d.eps == pytest.approx(EPS)
    if cls is FastAT:
        assert d.alpha == pytest.approx(1.25 * EPS)
    else:
        assert d.step_size == pytest.approx(2 / 255)
        assert d.steps == (7 if cls is DualAT else 10)
    if cls in (TRADES, MART):
        assert d.beta == 6.0
    if cls is DualAT:
        assert d.r == 0.5 and d.norm == "linf"


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_one_step_contract(cls, training):
    model, (x, y) = tiny_model(), batch()
    model.train(training)
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.zero_grad(set_to_none=True)
    defense = cls(**FAST_PARAMS[cls])
    defense.start_epoch(0, 1)
    loss, stats = defense.loss(model, x, y)
    # the inner attack left no parameter grads, restored every module's mode, and (seeded) used no global RNG
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    if not training:  # eval mode throughout: BN statistics untouched too
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert "train_adv_acc" in stats
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # and a full optimiser step runs
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_seeded_loss_is_reproducible(cls):
    model, (x, y) = tiny_model(), batch()
    model.eval()
    a = cls(**FAST_PARAMS[cls]).loss(model, x, y)[0].item()
    b = cls(**FAST_PARAMS[cls]).loss(model, x, y)[0].item()
    assert a == b


def test_dual_at_l2_and_validation():
    model, (x, y) = tiny_model(), batch()
    loss, stats = DualAT(norm="l2", eps=0.5, step_size=0.2, steps=2, seed=1).loss(model, x, y)
    assert torch.isfinite(loss) and "train_acc" in stats
    loss, stats = DualAT(r=0.0, steps=2, seed=1).loss(model, x, y)
    assert torch.isfinite(loss) and "train_acc" not in stats
    with pytest.raises(ValueError):
        DualAT(norm="l1")
    with pytest.raises(ValueError):
        DualAT(r=1.5)


# --------------------------------------------------------------------------------------------------
# a short training run: the robust methods beat standard training under PGD-10 at 8/255
# --------------------------------------------------------------------------------------------------
def test_trades_and_dual_at_are_more_robust_than_standard():
    # ~6 s on one core; the margin was >= 0.18 for data seeds 0-3 (and the run is seeded)
    x, y = toy_task(384, seed=0)
    train, x_test, y_test = ArraySplit(x[:256], y[:256], manifest=None), x[256:], y[256:]
    robust = {}
    # 3 inner steps of 4/255 keep the run short; the evaluation is full PGD-10 at 8/255
    for name, defense in [("standard", Standard()),
                          ("trades", TRADES(steps=3, step_size=4 / 255, seed=0)),
                          ("dual_at", DualAT(steps=3, step_size=4 / 255, seed=0))]:
        model = tiny_model(width=8)
        train_model(model, defense, train, None, epochs=6, batch_size=32, optim=OptimConfig(lr=3e-3), seed=0)
        assert accuracy(model, x_test, y_test) >= 0.9, name
        x_adv = PGD(model, eps=EPS, steps=10, step_size=2 / 255, seed=1)(x_test, y_test)
        robust[name] = accuracy(model, x_adv, y_test)
    assert robust["trades"] > robust["standard"] + 0.1, robust
    assert robust["dual_at"] > robust["standard"] + 0.1, robust
