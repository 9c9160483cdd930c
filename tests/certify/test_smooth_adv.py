"""``smooth_adv`` (Salman et al. 2019): the base model trains on noisy copies of adversarial points of
the smoothed classifier, found under the very noise draws the loss then uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medrobust.defenses import TRAINING_METHODS
from medrobust.models import ModelSpec, build_model
from tests.certify.test_smoothing import SIGMA, linear_binary, points_at
from tests.conftest import tiny_params


class Recorder(nn.Module):
    """The wrapped model, keeping a copy of every batch it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.detach().clone())
        return self.inner(z)


def test_one_noise_draw_serves_every_attack_step_and_the_loss_and_the_point_moves_eps_to_the_boundary():
    model, w, b = linear_binary()
    x = points_at(w, b, torch.tensor([0.5, 0.6, -0.55, 0.7]))
    y = torch.tensor([0, 0, 1, 0])
    m, steps, eps = 3, 4, 0.2
    rec = Recorder(model)
    loss, stats = TRAINING_METHODS["smooth_adv"](sigma=SIGMA, eps=eps, steps=steps, samples=m, seed=3).loss(rec, x, y)
    assert len(rec.seen) == steps + 1 and all(z.shape == (m * len(x), x.shape[1]) for z in rec.seen)
    noise = (rec.seen[0] - x.repeat(m, 1)).view(m, len(x), -1)  # the first step attacks x itself
    assert noise.std().item() == pytest.approx(SIGMA, rel=0.15)
    for z in rec.seen[1:]:
        moved = (z.view(m, len(x), -1) - noise) - x  # x' - x, the same for each of the m copies
        assert torch.allclose(moved, moved[:1].expand_as(moved), atol=1e-6)
    x_adv = rec.seen[-1].view(m, len(x), -1)[0] - noise[0]
    dist = (x_adv - x).norm(dim=1)
    assert (dist <= eps + 1e-5).all() and (dist > 0.95 * eps).all()
    # on a linear model the smoothed classifier is the model: the best L2 step is straight at its boundary
    before, after = (x @ w + b) / w.norm(), (x_adv @ w + b) / w.norm()
    assert torch.allclose(before.abs() - after.abs(), torch.full((4,), eps), atol=0.02)
    # the loss is the CE of the m noisy adversarial copies, and it is above the noise-only loss (ε = 0)
    logits = model(rec.seen[-1])
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(logits, y.repeat(m)).item(), rel=1e-6)
    noise_only, _ = TRAINING_METHODS["smooth_adv"](sigma=SIGMA, eps=0.0, steps=steps, samples=m, seed=3).loss(model, x, y)
    assert loss.item() > noise_only.item() + 0.05 and stats["train_eps"] == eps
    assert 0 <= stats["train_noisy_adv_acc"] <= 1


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
def test_the_step_contract_on_a_batch_norm_cnn(training):
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16)).train(training)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 16, 16, generator=g), torch.randint(0, 2, (8,), generator=g)
    modes, rng = [mod.training for mod in model.modules()], torch.get_rng_state()
    loss, stats = TRAINING_METHODS["smooth_adv"](seed=0).loss(model, x, y)
    # the attack ran in eval mode and left no parameter grads, the modes as they were, the global RNG untouched
    assert all(p.grad is None for p in model.parameters()) and [mod.training for mod in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                              for p in model.parameters())
    model.zero_grad(set_to_none=True)
    again, _ = TRAINING_METHODS["smooth_adv"](seed=0).loss(model.eval(), x, y)
    twice, _ = TRAINING_METHODS["smooth_adv"](seed=0).loss(model, x, y)
    assert again.item() == twice.item()  # seeded: reproducible


def test_warm_up_defaults_and_refusals():
    method = TRAINING_METHODS["smooth_adv"](eps=0.5, warmup_epochs=4)
    ramp = []
    for epoch in range(6):
        method.start_epoch(epoch, 6)
        ramp.append(method.current_eps())
    assert ramp == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    assert tiny_params(train={"method": "smooth_adv"}).train.settings() == {
        "sigma": 0.25, "eps": 0.25, "steps": 2, "samples": 2, "warmup_epochs": 0}
    for bad, match in (({"sigma": 0}, "sigma"), ({"eps": -0.1}, "eps"), ({"steps": 0}, "steps"),
                       ({"samples": 0}, "samples")):
        with pytest.raises(ValueError, match=match):
            TRAINING_METHODS["smooth_adv"](**bad)
