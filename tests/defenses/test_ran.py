"""RAN (arXiv 2407.02716) and the head-only baselines (linear probing, MLP tuning).

Hand-computed covariance, consistency and margin terms; the RAN head; one optimisation step trains
the head only (encoder weights and batch-norm statistics unchanged).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medrobust.defenses import TRAINING_METHODS, get_method
from medrobust.defenses.probes import LinearProbe, MLPTuning
from medrobust.defenses.ran import RAN, centroid_margin_loss, consistency_loss, covariance_loss
from medrobust.models import ModelSpec, build_model, load_model, save_model, set_trainable
from medrobust.models.ran_head import RANHead

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------
# hand-computed terms
# --------------------------------------------------------------------------------------------------
def test_covariance_loss_hand_computed():
    # mean (4, 2); centred rows (-3, 0), (-1, 2), (1, -2), (3, 0)
    # C_xy = (0 - 2 - 2 + 0) / (4 - 1) = -4/3;  L = (C_xy² + C_yx²) / D = 2 · (16/9) / 2 = 16/9
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [7.0, 2.0]])
    assert covariance_loss(z).item() == pytest.approx(16 / 9, rel=1e-6)
    # the diagonal (variances 20/3 and 8/3) does not count, nor does a shift of every row
    assert covariance_loss(z + torch.tensor([10.0, -3.0])).item() == pytest.approx(16 / 9, rel=1e-6)
    # uncorrelated dimensions: zero
    assert covariance_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])).item() == 0.0
    # agrees with torch.cov on random data, and one row has no covariance
    r = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    cov = torch.cov(r.T)
    expected = (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / 5
    assert covariance_loss(r).item() == pytest.approx(expected.item(), rel=1e-5)
    assert covariance_loss(r[:1]).item() == 0.0


def test_consistency_loss_hand_computed():
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    f = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # normalised: z → (0.6, 0.8), (1, 0); f → (0.8, 0.6), (0, 1): squared distances 0.08 and 2
    assert consistency_loss(z, f).item() == pytest.approx((0.08 + 2.0) / 2, rel=1e-6)
    # raw: ‖(1, -1)‖² = 2, ‖(-1, 2)‖² = 5
    assert consistency_loss(z, f, normalize=False).item() == pytest.approx(3.5, rel=1e-6)
    assert consistency_loss(z, 7 * z).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    with pytest.raises(ValueError, match="same shape"):
        consistency_loss(z, torch.zeros(2, 3))


def test_margin_loss_zero_beyond_the_margin():
    centroids = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # opposite: distance 2
    z = torch.tensor([[2.0, 0.0], [-0.5, 0.0], [3.0, 0.1]])  # each on its own centroid's side
    y = torch.tensor([0, 1, 0])
    assert centroid_margin_loss(z, y, centroids, margin=0.5).item() == 0.0
    # a single class has nothing to separate
    assert centroid_margin_loss(z, torch.zeros(3, dtype=torch.long), centroids[:1], margin=0.5).item() == 0.0


def test_margin_loss_hand_computed_inside_the_margin():
    centroids = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # (0, 1) is √2 from both centroids: relative margin 0, hinge μ = 0.5; (2, 0) is beyond the margin
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    assert centroid_margin_loss(z, y, centroids, margin=0.5).item() == pytest.approx((0.0 + 0.5) / 2, rel=1e-6)
    # three classes: centroids (1,0), (0,1), (-1,0) are √2, 2, √2 apart; μ = 1.5
    c3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    centroid_term = (2 * (1.5 - SQRT2) + 0.0) / 3
    # z = (1, 0), y = 0: distance 0 to its own centroid, √2 and 2 to the others
    sample_term = ((1.5 - SQRT2) + 0.0) / 2
    z1, y1 = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert centroid_margin_loss(z1, y1, c3, margin=1.5).item() == pytest.approx(sample_term + centroid_term, rel=1e-5)
    # z = (0, -1), y = 2: √2 from its own centroid, √2 from c_0, 2 from c_1 → hinges 1.5 and 1.5 - (2 - √2)
    z2, y2 = torch.tensor([[0.0, -1.0]]), torch.tensor([2])
    sample_term2 = (1.5 + (1.5 - (2 - SQRT2))) / 2
    assert centroid_margin_loss(z2, y2, c3, margin=1.5).item() == pytest.approx(sample_term2 + centroid_term,
                                                                                 rel=1e-5)
    # distances are between unit vectors: scaling features and centroids changes nothing
    assert centroid_margin_loss(5 * z2, y2, 3 * c3, margin=1.5).item() == pytest.approx(
        sample_term2 + centroid_term, rel=1e-5)


def test_margin_loss_gradients_push_apart_only_inside_the_margin():
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # √2 apart
    z = torch.tensor([[1.0, 0.2]], requires_grad=True)
    loss = centroid_margin_loss(z, torch.tensor([0]), centroids, margin=1.9)
    loss.backward()
    assert loss.item() > 0
    # a gradient step moves the two centroids further apart
    step = centroids.detach() - 0.1 * centroids.grad
    assert torch.dist(F.normalize(step[0], dim=0), F.normalize(step[1], dim=0)) > SQRT2
    z2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    centroid_margin_loss(z2, torch.tensor([0]), far, margin=0.5).backward()
    assert torch.count_nonzero(z2.grad) == 0 and torch.count_nonzero(far.grad) == 0


# --------------------------------------------------------------------------------------------------
# the head and the defence contract
# --------------------------------------------------------------------------------------------------
def tiny(method: str, seed: int = 0) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed)
    defense = get_method(method)
    model = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16, **defense.model_overrides))
    set_trainable(model, defense.trainable)
    return model, defense


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), torch.tensor([0, 1] * (n // 2))


def test_ran_head_shapes_and_centroid_init():
    head = RANHead(6, 3, hidden=4)
    assert [tuple(p.shape) for p in head.transform.parameters()] == [(4, 6), (4,), (6, 4), (6,)]
    assert head.centroids.shape == (3, 6) and head(torch.randn(5, 6)).shape == (5, 3)
    z = torch.tensor([[1.0] * 6, [3.0] * 6, [-2.0] * 6])
    absent = head.init_centroids(z, torch.tensor([0, 0, 1]))
    assert absent == [2]
    torch.testing.assert_close(head.centroids[0], torch.full((6,), 2.0))
    torch.testing.assert_close(head.centroids[1], torch.full((6,), -2.0))


def test_ran_prepare_sets_centroids_to_class_means_of_z():
    model, ran = tiny("ran")
    x, y = batch(10)
    ran.prepare(model, x, y)
    model.eval()
    with torch.no_grad():
        z = model.head.transform(model.embed(x))
    torch.testing.assert_close(model.head.centroids[0], z[y == 0].mean(0))
    torch.testing.assert_close(model.head.centroids[1], z[y == 1].mean(0))


def test_ran_loss_is_the_weighted_sum_of_its_terms():
    model, _ = tiny("ran")
    ran = RAN(cov_weight=0.3, consistency_weight=0.2, adv_weight=0.7, margin=1.0)
    x, y = batch()
    model.eval()
    loss, stats = ran.loss(model, x, y)
    with torch.no_grad():
        f = model.embed(x)
        z = model.head.transform(f)
        expected = (F.cross_entropy(model.head.classifier(z), y) + 0.3 * covariance_loss(z)
                    + 0.2 * consistency_loss(z, f) + 0.7 * centroid_margin_loss(z, y, model.head.centroids, 1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(stats) == {"train_acc", "train_ce", "train_cov", "train_consistency", "train_margin"}


@pytest.mark.parametrize("method", ["ran", "linear_probe", "mlp_tuning"])
def test_one_step_trains_the_head_only(method):
    model, defense = tiny(method)
    assert defense.trainable == "head"
    assert all(n.startswith("head.") for n, p in model.named_parameters() if p.requires_grad)
    x, y = batch()
    defense.prepare(model, x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    loss, stats = defense.loss(model, x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed), changed
    # the frozen encoder's batch-norm statistics did not move although the model was in train mode
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k or "num_batches" in k)
    assert 0.0 <= stats["train_acc"] <= 1.0
    if method == "ran":
        assert {"head.centroids", "head.classifier.weight", "head.transform.0.weight"} <= changed


def test_heads_and_round_trip(tmp_path):
    assert isinstance(tiny("linear_probe")[0].head, torch.nn.Linear)
    assert isinstance(tiny("mlp_tuning")[0].head, torch.nn.Sequential)
    model, ran = tiny("ran")
    spec = ModelSpec("small_cnn", 2, width=4, image_size=16, head="ran")
    x, y = batch()
    ran.prepare(model, x, y)
    save_model(model, spec, tmp_path)
    loaded, _ = load_model(tmp_path)
    torch.testing.assert_close(loaded.head.centroids, model.head.centroids)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_registry_parameters_and_errors():
    assert TRAINING_METHODS["ran"] is RAN and TRAINING_METHODS["linear_probe"] is LinearProbe and TRAINING_METHODS["mlp_tuning"] is MLPTuning
    assert RAN.model_overrides == {"head": "ran"} and LinearProbe.model_overrides == {"head": "linear"}
    assert MLPTuning.model_overrides == {"head": "mlp"}
    with pytest.raises(ValueError, match="margin"):
        RAN(margin=2.5)
    with pytest.raises(ValueError, match=">= 0"):
        RAN(cov_weight=-1.0)
    model = build_model(ModelSpec("small_cnn", 2, width=4, image_size=16))  # the default head, not 'ran'
    with pytest.raises(TypeError, match="'ran' head"):
        RAN().loss(model, *batch())
