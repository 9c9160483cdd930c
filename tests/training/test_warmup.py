"""The clean warm-up per method: ``warmup_loss`` during it, ``end_warmup`` once when it ends.

The loop's order of calls; RAN's centroids set from the warmed-up head and its warm-up loss without
the margin term; DSBN's adversarial BN copied and re-calibrated on PGD images (and what that buys: an
adversarially routed model that is not at chance); domain assimilation keeping its GLCM constraint;
and a seeded method resumed across the end of the warm-up ending bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medrobust.data.shards import ArraySplit
from medrobust.defenses import get_method
from medrobust.defenses.base import TrainingMethod
from medrobust.defenses.dpaat import DPAAT
from medrobust.defenses.dsbn import DSBN
from medrobust.defenses.ran import RAN, centroid_margin_loss
from medrobust.models import ModelSpec, bn_route, build_model, dual_bn_layers
from medrobust.models.inference import accuracy
from medrobust.training import OptimConfig, train_model


def split(n: int = 16, seed: int = 0, size: int = 16) -> ArraySplit:
    """A learnable two-class set: class 1 is brighter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.3 * torch.rand(n, 1, size, size, generator=g) + 0.35 * y.view(-1, 1, 1, 1).float()).clamp(0, 1)
    return ArraySplit(x, y, pd.DataFrame({"i": range(n)}))


class Recorder(TrainingMethod):
    name = "recorder_warmup"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def warmup_loss(self, model, x, y):
        self.calls.append("warmup_loss")
        return super().warmup_loss(model, x, y)

    def end_warmup(self, model, x, y):
        self.calls.append(f"end_warmup({len(x)})")

    def start_epoch(self, epoch, total_epochs):
        super().start_epoch(epoch, total_epochs)
        self.calls.append(f"start_epoch({epoch}, {total_epochs})")

    def loss(self, model, x, y):
        self.calls.append("loss")
        return super().warmup_loss(model, x, y)


def test_loop_calls_warmup_loss_then_end_warmup_once_then_the_method():
    data = split(8)
    rec = Recorder()
    train_model(build_model(ModelSpec("small_cnn", 2, width=4)), rec, data, None, epochs=3, batch_size=4,
                optim=OptimConfig(), seed=0, clean_warmup_epochs=2)
    assert rec.calls == ["warmup_loss"] * 4 + ["end_warmup(8)", "start_epoch(0, 1)", "loss", "loss"]
    rec = Recorder()
    train_model(build_model(ModelSpec("small_cnn", 2, width=4)), rec, data, None, epochs=2, batch_size=4,
                optim=OptimConfig(), seed=0)
    assert rec.calls == ["start_epoch(0, 2)", "loss", "loss", "start_epoch(1, 2)", "loss", "loss"]
    rec = Recorder()  # a warm-up as long as the run: the method never starts
    train_model(build_model(ModelSpec("small_cnn", 2, width=4)), rec, data, None, epochs=2, batch_size=4,
                optim=OptimConfig(), seed=0, clean_warmup_epochs=5)
    assert rec.calls == ["warmup_loss"] * 4


def both_losses(method: TrainingMethod, model: torch.nn.Module, data: ArraySplit) -> tuple:
    """``warmup_loss`` and ``loss`` of one batch after ``prepare``, each from the same global seed."""
    method.prepare(model, data.x, data.y)
    model.train()
    torch.manual_seed(1)
    warm, warm_stats = method.warmup_loss(model, data.x, data.y)
    torch.manual_seed(1)
    full, full_stats = method.loss(model, data.x, data.y)
    return warm, warm_stats, full, full_stats


def test_base_warmup_loss_is_clean_cross_entropy():
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=4))
    data = split(8)
    loss, stats = get_method("pgd_at").warmup_loss(model, data.x, data.y)
    logits = model(data.x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, data.y).item(), rel=1e-6)
    assert stats == {"train_acc": pytest.approx((logits.argmax(1) == data.y).float().mean().item())}


# --------------------------------------------------------------------------------------------------
# RAN
# --------------------------------------------------------------------------------------------------
def ran_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", 2, width=4, image_size=16, head="ran"))


def test_ran_warmup_loss_is_the_loss_without_the_margin_term():
    model, data = ran_model(), split(8)
    ran = RAN(adv_weight=0.7)
    warm, warm_stats, full, full_stats = both_losses(ran, model, data)
    assert "train_margin" not in warm_stats and set(full_stats) - set(warm_stats) == {"train_margin"}
    head = model.head
    with torch.no_grad():
        z = head.transform(model.embed(data.x))
    margin = centroid_margin_loss(z, data.y, head.centroids, ran.margin).item()
    assert full_stats["train_margin"] == pytest.approx(margin, rel=1e-5)
    assert margin > 0  # the check below compares two different numbers
    assert (full - warm).item() == pytest.approx(0.7 * margin, rel=1e-4)


def test_ran_end_warmup_sets_the_centroids_from_the_trained_head():
    model, data = ran_model(), split(16)
    ran = RAN()
    ran.prepare(model, data.x, data.y)
    before = model.head.centroids.detach().clone()
    train_model(model, ran, data, None, epochs=2, batch_size=8, optim=OptimConfig(lr=0.05), seed=0,
                clean_warmup_epochs=2)  # the warm-up only: the centroids are not a term of it
    assert torch.equal(model.head.centroids.detach(), before)
    ran.end_warmup(model, data.x, data.y)
    model.eval()
    with torch.no_grad():
        z = model.head.transform(model.embed(data.x))
    expected = torch.stack([z[data.y == k].mean(0) for k in (0, 1)])
    assert torch.allclose(model.head.centroids.detach(), expected, atol=1e-6)
    assert not torch.allclose(expected, before, atol=1e-3)  # the warm-up moved Z: the old centroids were stale
    off = RAN(init_centroids=False)
    kept = model.head.centroids.detach().clone()
    off.end_warmup(model, data.x + 0.1, data.y)
    assert torch.equal(model.head.centroids.detach(), kept)


# --------------------------------------------------------------------------------------------------
# DSBN
# --------------------------------------------------------------------------------------------------
def dual_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("small_cnn", 2, width=4, image_size=16, dual_bn=True))


def test_dsbn_end_warmup_without_calibration_copies_the_clean_bn():
    model, data = dual_model(), split(8)
    train_model(model, DSBN(seed=0), data, None, epochs=1, batch_size=4, optim=OptimConfig(), seed=0,
                clean_warmup_epochs=1)
    layers = dual_bn_layers(model)
    assert layers and all(m.adv.running_mean.abs().max() == 0 for m in layers)  # untouched by the warm-up
    DSBN(bn_calibration_images=0).end_warmup(model, data.x, data.y)
    for m in layers:
        for key, value in m.clean.state_dict().items():
            assert torch.equal(m.adv.state_dict()[key], value), key
    with pytest.raises(ValueError, match="bn_calibration_images must be >= 0"):
        DSBN(bn_calibration_images=-1)
    with pytest.raises(ValueError, match="no dual batch-norm"):
        DSBN().end_warmup(build_model(ModelSpec("small_cnn", 2, width=4)), data.x, data.y)


def test_dsbn_end_warmup_recalibrates_the_adversarial_statistics_on_pgd_images():
    model, data = dual_model(), split(300)
    train_model(model, DSBN(seed=0), data, None, epochs=1, batch_size=32, optim=OptimConfig(), seed=0,
                clean_warmup_epochs=1)
    layers = dual_bn_layers(model)
    momenta = [m.adv.momentum for m in layers]
    before = copy.deepcopy(model)
    model.train()
    DSBN(eps=8 / 255, bn_calibration_images=200, seed=0).end_warmup(model, data.x, data.y)
    assert model.training  # the mode is restored
    for m, momentum in zip(layers, momenta):
        assert m.adv.momentum == momentum
        assert int(m.adv.num_batches_tracked) == 2  # 200 images in chunks of 128: a cumulative average over 2
        assert torch.equal(m.adv.weight, m.clean.weight) and torch.equal(m.adv.bias, m.clean.bias)
        assert not torch.allclose(m.adv.running_mean, m.clean.running_mean)
        assert m.adv.weight is not m.clean.weight  # copied, not shared
    # by hand: the same PGD images through a copy, the first adversarial BN's inputs captured; with
    # momentum None the running mean is the mean of the two batches' means
    inputs: list[torch.Tensor] = []
    ref = copy.deepcopy(before)
    ref_layers = dual_bn_layers(ref)
    for m in ref_layers:
        m.adv.load_state_dict(m.clean.state_dict())
    ref.eval()
    attacker = DSBN(eps=8 / 255, bn_calibration_images=200, seed=0)
    idx = torch.arange(200) * 300 // 200
    adv = [attacker.perturb(ref, data.x[chunk], data.y[chunk]) for chunk in idx.split(128)]
    hook = ref_layers[0].adv.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach()))
    with torch.no_grad(), bn_route(ref, "adv"):
        for images in adv:
            ref(images)
    hook.remove()
    assert [len(i) for i in inputs] == [128, 72]
    expected_mean = torch.stack([i.mean((0, 2, 3)) for i in inputs]).mean(0)
    expected_var = torch.stack([i.var((0, 2, 3), unbiased=True) for i in inputs]).mean(0)
    assert torch.allclose(layers[0].adv.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(layers[0].adv.running_var, expected_var, rtol=1e-4)


def test_dsbn_after_a_clean_warmup_the_calibrated_adversarial_route_is_not_at_chance():
    train_set, test_set = split(256, seed=0), split(128, seed=1)
    results = {}
    for images in (0, 256):
        model = dual_model()
        train_model(model, DSBN(seed=0), train_set, None, epochs=3, batch_size=32, optim=OptimConfig(lr=0.05),
                    seed=0, clean_warmup_epochs=3)
        results[("clean", images)] = accuracy(model, test_set.x, test_set.y)
        if images:
            DSBN(eps=2 / 255, bn_calibration_images=images, seed=0).end_warmup(model, train_set.x, train_set.y)
        model.eval()
        with bn_route(model, "adv"):
            results[("adv", images)] = accuracy(model, test_set.x, test_set.y)
    assert results[("clean", 0)] >= 0.95, results
    assert results[("adv", 0)] <= 0.6, results  # initial BN statistics: near chance on a 50/50 set
    assert results[("adv", 256)] >= results[("clean", 256)] - 0.05, results


# --------------------------------------------------------------------------------------------------
# domain assimilation, DPAAT state
# --------------------------------------------------------------------------------------------------
def test_domain_assimilation_keeps_its_glcm_constraint_in_the_warmup():
    method = get_method("domain_assimilation")
    model = build_model(ModelSpec("small_cnn", 2, width=4, **method.model_overrides))
    warm, stats, full, _ = both_losses(method, model, split(8))
    assert "train_glcm" in stats
    assert warm.item() == pytest.approx(full.item(), rel=1e-6)


def test_dpaat_state_dict_round_trip_keeps_the_average_and_the_generator():
    a = DPAAT(seed=3)
    a.dl_avg.update(torch.tensor([0.5, 1.5]))
    gen = a.generator(torch.device("cpu"))
    torch.rand(5, generator=gen)
    state = a.state_dict()
    b = DPAAT(seed=3)
    b.load_state_dict(state)
    assert (b.dl_avg.value, b.dl_avg.count) == (a.dl_avg.value, a.dl_avg.count)
    assert torch.equal(torch.rand(4, generator=b.generator(torch.device("cpu"))), torch.rand(4, generator=gen))
    c = DPAAT(seed=3)
    c.load_state_dict({})
    assert c.dl_avg.value is None and c.dl_avg.count == 0


def test_generator_per_device_is_never_reseeded():
    m = get_method("dsbn", seed=7)
    cpu = m.generator(torch.device("cpu"))
    first = torch.rand(3, generator=cpu)
    assert m.generator("cpu") is cpu
    assert not torch.equal(torch.rand(3, generator=m.generator(torch.device("cpu"))), first)


# --------------------------------------------------------------------------------------------------
# resume across the end of the warm-up
# --------------------------------------------------------------------------------------------------
class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["dsbn", "dpaat"])
def test_seeded_method_resumed_across_the_warmup_end_is_bit_identical(tmp_path, name):
    data = split(32)
    kwargs = {"seed": 5, "steps": 2} if name == "dsbn" else {"seed": 5}
    if name == "dsbn":
        kwargs["bn_calibration_images"] = 20

    def run(resume_dir, kill_after=None):
        torch.manual_seed(0)
        model = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16, dual_bn=name == "dsbn"))
        method = get_method(name, **kwargs)
        method.prepare(model, data.x, data.y)

        def on_epoch(epoch, metrics):
            if epoch == kill_after:
                raise Killed(epoch)

        train_model(model, method, data, None, epochs=5, batch_size=8, optim=OptimConfig(), seed=0,
                    clean_warmup_epochs=2, on_epoch=on_epoch, resume_dir=resume_dir, resume_key="k")
        return model.state_dict()

    whole = run(None)
    # on_epoch raises before the epoch's state is saved: killed in epoch 3 resumes from the warm-up's end
    # (end_warmup still to come), killed in epoch 4 after one epoch of the method (its generator advanced)
    for kill in (3, 4):
        folder = tmp_path / f"resume{kill}"
        with pytest.raises(Killed):
            run(folder, kill_after=kill)
        assert (folder / "state.pt").exists()
        resumed = run(folder)
        for key, value in whole.items():
            assert torch.equal(resumed[key], value), (kill, key)
