"""RAN's upstream stage: captions, exactly round(r·N) noisy pairs, and contrastive pretraining of a tiny CLIP.

The noisy pairs: the count per ratio, images within ε and in [0, 1], perturbed captions different
from their originals and clean rows untouched; both attacks do what they are for on the surrogate.
The pretraining loss falls on clean pairs, and the pre-trained tower loads as the ``clip_vit_tiny``
backbone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from medrobust.models import ModelSpec, build_model
from medrobust.pretrain import (build_clip, caption_vocabulary, choose_noisy, contrastive_loss, image_pgd,
                                make_captions, make_noisy_pairs, perturb_captions, pretrain_clip)
from medrobust.pretrain.captions import caption

pytest.importorskip("open_clip")


def pairs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[str], pd.DataFrame]:
    """Grey 32×32 images whose brightness tells the label and whose bright edge tells the side."""
    rng = np.random.default_rng(seed)
    manifest = pd.DataFrame({"modality": "MG", "laterality": rng.choice(["L", "R"], n),
                             "view_position": rng.choice(["CC", "MLO"], n)})
    y = torch.tensor(rng.integers(0, 2, n))
    x = 0.3 * torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) + 0.4 * y.view(-1, 1, 1, 1)
    x[torch.tensor((manifest.laterality == "L").to_numpy()), :, :, :8] += 0.3
    labels = ["lesion" if v else "normal" for v in y.tolist()]
    return x.clamp(0, 1), make_captions(manifest, labels, seed), manifest


@pytest.fixture(scope="module")
def surrogate() -> tuple:
    x, captions, _ = pairs(96)
    model = build_clip(seed=0)
    pretrain_clip(model, x, captions, epochs=6, batch_size=32, lr=1e-3, seed=0)
    return model, x, captions


# --------------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------------
def test_captions_name_the_finding_side_and_view():
    row = pd.Series({"modality": "MG", "laterality": "L", "view_position": "CC"})
    assert caption(row, "lesion", 0) == "a mammogram with a lesion in the left breast"
    assert caption(row, "normal", 1) == "a craniocaudal mammogram of the left breast showing no lesion"
    assert caption(row, "lesion", 2) == "left breast, craniocaudal view: a lesion"
    # unknown modality, no side or view, a label of another name
    bare = pd.Series({"modality": "XA", "laterality": None, "view_position": float("nan")})
    assert caption(bare, "benign", 0) == "a medical image with benign"
    assert caption(bare, "benign", 2) == "a medical image: benign"
    assert caption(pd.Series({"modality": "CR", "laterality": "R"}), "normal", 0) == \
        "a chest x-ray with no lesion in the right lung"


def test_make_captions_is_seeded_and_checks_lengths():
    _, first, manifest = pairs(40, seed=3)
    labels = ["lesion"] * 40
    assert make_captions(manifest, labels, 7) == make_captions(manifest, labels, 7)
    assert make_captions(manifest, labels, 7) != make_captions(manifest, labels, 8)
    assert len({c.split()[0] for c in make_captions(manifest, labels, 7)}) > 1  # more than one template
    with pytest.raises(ValueError, match="3 labels for 40 manifest rows"):
        make_captions(manifest, labels[:3], 0)
    vocab = caption_vocabulary(first)
    assert {"left", "right", "lesion", "no", "mammogram", "craniocaudal"} <= set(vocab) and vocab == sorted(vocab)


# --------------------------------------------------------------------------------------------------
# which pairs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("n", [0, 1, 10, 30, 97, 1000])
def test_choose_noisy_picks_exactly_round_r_n(ratio, n):
    mask = choose_noisy(n, ratio, seed=0)
    assert mask.dtype == torch.bool and mask.shape == (n,) and int(mask.sum()) == round(ratio * n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 500), ratio=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_choose_noisy_count_for_any_ratio(n, ratio, seed):
    mask = choose_noisy(n, ratio, seed)
    assert int(mask.sum()) == round(ratio * n)
    assert torch.equal(mask, choose_noisy(n, ratio, seed))


def test_choose_noisy_refuses_bad_ratios_and_varies_with_the_seed():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="noise ratio must be in"):
            choose_noisy(10, bad, 0)
    assert not torch.equal(choose_noisy(200, 0.2, 0), choose_noisy(200, 0.2, 1))


# --------------------------------------------------------------------------------------------------
# the noisy pairs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.2, 0.3])
def test_noisy_pairs_perturb_exactly_round_r_n_within_eps(surrogate, ratio):
    model, x, captions = surrogate
    eps = 4 / 255
    out = make_noisy_pairs(model, x, captions, ratio=ratio, vocabulary=caption_vocabulary(captions), eps=eps,
                           steps=3, seed=1)
    k = round(ratio * len(x))
    assert out.summary() == {"pairs": 96, "noisy": k, "noisy_images": k, "noisy_captions": k}
    noisy = out.noisy
    assert (out.images - x).abs().max() <= eps + 1e-6 and out.images.min() >= 0 and out.images.max() <= 1
    assert torch.equal(out.images[~noisy], x[~noisy])  # clean rows: bit for bit
    changed = ((out.images - x).flatten(1).abs().amax(1) > 0)
    assert torch.equal(changed, noisy)
    for i, (before, after) in enumerate(zip(captions, out.captions)):
        assert (before != after) == bool(noisy[i]), (i, before, after)
    assert model.training is False  # the fixture left it in eval mode; the attacks restored it


def test_noisy_pairs_of_one_modality(surrogate):
    model, x, captions = surrogate
    vocab = caption_vocabulary(captions)
    image_only = make_noisy_pairs(model, x, captions, ratio=0.2, vocabulary=vocab, eps=0.02, steps=2,
                                  modalities="image", seed=0)
    assert image_only.captions == captions and int(image_only.image_noisy.sum()) == 19
    assert int(image_only.text_noisy.sum()) == 0
    text_only = make_noisy_pairs(model, x, captions, ratio=0.2, vocabulary=vocab, eps=0.02, steps=2,
                                 modalities="text", seed=0)
    assert torch.equal(text_only.images, x) and sum(a != b for a, b in zip(captions, text_only.captions)) == 19
    with pytest.raises(ValueError, match="modalities must be"):
        make_noisy_pairs(model, x, captions, ratio=0.2, vocabulary=vocab, eps=0.02, steps=2, modalities="audio")


def _own_caption_ce(model, x, captions):
    bank = sorted(set(captions))
    with torch.no_grad():
        logits = model.clip.logit_scale.exp() * model.encode_image(x) @ model.encode_text(model.tokens(bank)).T
    return F.cross_entropy(logits, torch.tensor([bank.index(c) for c in captions])).item()


def test_the_attacks_push_pairs_apart(surrogate):
    model, x, captions = surrogate
    eps = 16 / 255
    adv = image_pgd(model, x[:32], captions[:32], eps=eps, steps=5, seed=0)
    noise = (x[:32] + eps * torch.randn(x[:32].shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    clean_ce, noise_ce, adv_ce = (_own_caption_ce(model, v, captions[:32]) for v in (x[:32], noise, adv))
    assert adv_ce > max(clean_ce, noise_ce) + 0.1, (clean_ce, noise_ce, adv_ce)  # measured: 1.81, 1.81, 1.98
    texts = perturb_captions(model, x[:16], captions[:16], caption_vocabulary(captions))
    with torch.no_grad():
        v = model.encode_image(x[:16])
        before = (v * model.encode_text(model.tokens(captions[:16]))).sum(1)
        after = (v * model.encode_text(model.tokens(texts))).sum(1)
    assert bool((after < before).all())
    assert all(abs(len(a.split()) - len(b.split())) <= 1 for a, b in zip(captions, texts))  # one word edit
    with pytest.raises(ValueError, match="eps >= 0 and steps >= 1"):
        image_pgd(model, x[:2], captions[:2], eps=-1.0, steps=1)


# --------------------------------------------------------------------------------------------------
# pretraining
# --------------------------------------------------------------------------------------------------
def test_pretraining_loss_falls_on_clean_pairs_and_is_seeded():
    x, captions, _ = pairs(64)
    model = build_clip(seed=0)
    before = contrastive_loss(model, x, captions)
    history = pretrain_clip(model, x, captions, epochs=5, batch_size=16, lr=1e-3, seed=0)
    after = contrastive_loss(model, x, captions)
    assert after < before - 0.3, (before, after)
    assert history[-1] < history[0]
    again = build_clip(seed=0)
    assert pretrain_clip(again, x, captions, epochs=5, batch_size=16, lr=1e-3, seed=0) == history
    with pytest.raises(ValueError, match="batch_size >= 2"):
        pretrain_clip(again, x, captions, epochs=1, batch_size=1)


def test_pretrained_tower_loads_as_the_clip_vit_tiny_backbone(tmp_path):
    x, captions, _ = pairs(32)
    model = build_clip(seed=2)
    pretrain_clip(model, x, captions, epochs=1, batch_size=16, seed=0)
    torch.save(model.clip_state_dict(), tmp_path / "clip.pt")
    classifier = build_model(ModelSpec("clip_vit_tiny", 2, mean=0.0, std=1.0), pretrained=tmp_path / "clip.pt")
    classifier.eval()
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(classifier.embed(x), dim=-1), model.encode_image(x))
