"""Noisy upstream pairs: a set share of image–caption pairs perturbed by multimodal adversarial attacks.

RAN (arXiv 2407.02716) pre-trains on upstream data of which a ratio r ∈ {0, 5, 10, 20, 30} % of the
pairs are noisy, made by attacking a vision-language model. Here (the paper's attack settings are not
in the sources available, so each choice below is ours and documented):

* **Which pairs** (:func:`choose_noisy`): exactly ``round(r·N)`` of the N pairs (Python's ``round``),
  drawn by a seeded permutation; the others are left byte for byte as they were.
* **Images** (:func:`image_pgd`): L∞ PGD in [0, 1] pixel space with a uniform random start, sign
  steps of ``step_size`` (default 2.5·ε/steps), projected to the ε-ball and to [0, 1]. It *maximises*
  the image-to-text half of the contrastive loss: the cross-entropy of ``scale · v·tᵀ`` over the set's
  distinct captions, the target being the image's own caption, so the image moves away from its
  caption and towards the others (one image alone is well defined, unlike an in-batch loss).
* **Captions** (:func:`perturb_captions`): ``edits`` greedy word edits, each the substitution (a word
  replaced by a vocabulary word) or insertion (a vocabulary word put in) that most lowers the cosine
  similarity between the pair's image and the caption under the text tower. Every edit changes the
  text, so a perturbed caption always differs from its original.
* ``modalities`` chooses what a noisy pair gets: ``both`` (default), ``image`` or ``text``.

The attacker is a surrogate CLIP (in the pretraining stage: the model pre-trained on the clean
pairs). Attacks take gradients with respect to the images only, run the model in eval mode and
restore its mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medrobust.pretrain.clip import ImageTextModel

log = logging.getLogger(__name__)

Modalities = Literal["both", "image", "text"]


@dataclass
class NoisyPairs:
    """Upstream pairs after the noise was put in.

    Attributes:
        images: ``[N, C, H, W]`` in [0, 1] (perturbed rows within ε of the originals).
        captions: N captions (perturbed rows differ from the originals).
        noisy: ``[N]`` bool, the pairs chosen (``round(r·N)`` of them).
        image_noisy: ``[N]`` bool, the pairs whose image was attacked.
        text_noisy: ``[N]`` bool, the pairs whose caption was attacked.
    """

    images: torch.Tensor
    captions: list[str]
    noisy: torch.Tensor
    image_noisy: torch.Tensor
    text_noisy: torch.Tensor

    def summary(self) -> dict[str, int]:
        """Counts: pairs, noisy pairs, attacked images, attacked captions."""
        return {"pairs": len(self.captions), "noisy": int(self.noisy.sum()),
                "noisy_images": int(self.image_noisy.sum()), "noisy_captions": int(self.text_noisy.sum())}


def choose_noisy(n: int, ratio: float, seed: int) -> torch.Tensor:
    """A ``[n]`` bool mask with exactly ``round(ratio·n)`` True entries, placed by a permutation seeded with ``seed``.

    Raises:
        ValueError: ``ratio`` is outside [0, 1] (or not a number) or ``n`` is negative.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pretrain: a noise ratio must be in [0, 1], got {ratio}")
    if n < 0:
        raise ValueError(f"pretrain: n must be >= 0, got {n}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:round(ratio * n)]] = True
    return mask


def image_pgd(model: ImageTextModel, images: torch.Tensor, captions: list[str], *, eps: float, steps: int,
              step_size: float | None = None, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """L∞ PGD that pushes each image away from its caption (module docstring).

    Args:
        model: the surrogate CLIP.
        images: ``[N, C, H, W]`` in [0, 1].
        captions: each image's caption; the set of distinct captions is the softmax's classes.
        eps: the L∞ budget in [0, 1] units (≥ 0).
        steps: PGD iterations (≥ 1).
        step_size: the step; None: ``2.5·eps/steps``.
        seed: seeds the random start.
        batch_size: images per forward pass.

    Returns:
        The adversarial images, on ``images``' device, within ``eps`` of them and in [0, 1].

    Raises:
        ValueError: a negative ``eps``, ``steps`` < 1, or a caption count that differs from the images'.
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"pretrain: image PGD needs eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    if len(captions) != len(images):
        raise ValueError(f"pretrain: {len(captions)} captions for {len(images)} images")
    if len(images) == 0 or eps == 0:
        return images.clone()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    bank = sorted(set(captions))
    index = {c: i for i, c in enumerate(bank)}
    target = torch.tensor([index[c] for c in captions])
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            texts = model.encode_text(model.tokens(bank))
            scale = model.clip.logit_scale.exp()
        device = texts.device
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            y = target[start:start + batch_size].to(device)
            delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(device) * eps
            adv = (x + delta).clamp(0, 1)
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(scale * model.encode_image(adv) @ texts.T, y)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + alpha * grad.sign()
                adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
            out.append(adv.detach().to(images.device))
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def perturb_captions(model: ImageTextModel, images: torch.Tensor, captions: list[str], vocabulary: list[str],
                     edits: int = 1, progress: bool = False) -> list[str]:
    """Greedy word substitution or insertion against the text tower (module docstring).

    Args:
        model: the surrogate CLIP.
        images: each caption's image ``[N, C, H, W]`` in [0, 1].
        captions: the captions to perturb.
        vocabulary: the candidate words (at least two).
        edits: word edits per caption (≥ 1).
        progress: show a progress bar.

    Returns:
        The perturbed captions; each differs from its original.

    Raises:
        ValueError: ``edits`` < 1, fewer than two vocabulary words, or a caption count that differs from the images'.
    """
    if edits < 1 or len(set(vocabulary)) < 2:
        raise ValueError(f"pretrain: caption attack needs edits >= 1 and two vocabulary words, got edits={edits}, "
                         f"{len(set(vocabulary))} words")
    if len(captions) != len(images):
        raise ValueError(f"pretrain: {len(captions)} captions for {len(images)} images")
    if not captions:
        return []
    words_all = sorted(set(vocabulary))
    was_training = model.training
    model.eval()
    try:
        device = model.clip.logit_scale.device
        vision = torch.cat([model.encode_image(images[s:s + 64].to(device)) for s in range(0, len(images), 64)])
        out = []
        for caption, v in tqdm(list(zip(captions, vision)), desc="caption attack", disable=not progress,
                               leave=False):
            words = caption.split()
            for _ in range(edits):
                candidates = {" ".join(words[:i] + [w] + words[i + 1:]) for i in range(len(words))
                              for w in words_all if w != words[i]}
                candidates |= {" ".join(words[:i] + [w] + words[i:]) for i in range(len(words) + 1) for w in words_all}
                ordered = sorted(candidates)
                sims = torch.cat([model.encode_text(model.tokens(ordered[s:s + 512])) @ v
                                  for s in range(0, len(ordered), 512)])
                words = ordered[int(sims.argmin())].split()
            out.append(" ".join(words))
    finally:
        model.train(was_training)
    return out


def make_noisy_pairs(model: ImageTextModel, images: torch.Tensor, captions: list[str], *, ratio: float,
                     vocabulary: list[str], eps: float, steps: int, edits: int = 1, modalities: Modalities = "both",
                     seed: int = 0) -> NoisyPairs:
    """Perturb exactly ``round(ratio·N)`` pairs: their images by :func:`image_pgd`, their captions by
    :func:`perturb_captions` (or only one of them, ``modalities``).

    Args:
        model: the surrogate CLIP that is attacked.
        images: ``[N, C, H, W]`` in [0, 1].
        captions: N captions.
        ratio: the share of noisy pairs, in [0, 1].
        vocabulary: the caption attack's words (:func:`medrobust.pretrain.captions.caption_vocabulary`).
        eps: the image budget (L∞, [0, 1] units).
        steps: image PGD steps.
        edits: word edits per caption.
        modalities: ``both``, ``image`` or ``text``.
        seed: seeds the choice of pairs and the PGD start.

    Returns:
        The pairs (:class:`NoisyPairs`); clean rows are unchanged copies.

    Raises:
        ValueError: an unknown ``modalities``, or a bad ratio, budget or count (from the attacks).
    """
    if modalities not in ("both", "image", "text"):
        raise ValueError(f"pretrain: modalities must be 'both', 'image' or 'text', got {modalities!r}")
    if len(captions) != len(images):
        raise ValueError(f"pretrain: {len(captions)} captions for {len(images)} images")
    noisy = choose_noisy(len(images), ratio, seed)
    rows = noisy.nonzero().flatten()
    out_images, out_captions = images.clone(), list(captions)
    image_noisy = noisy if modalities in ("both", "image") else torch.zeros_like(noisy)
    text_noisy = noisy if modalities in ("both", "text") else torch.zeros_like(noisy)
    picked = [captions[i] for i in rows.tolist()]
    if image_noisy.any():
        out_images[rows] = image_pgd(model, images[rows], picked, eps=eps, steps=steps, seed=seed)
    if text_noisy.any():
        for i, text in zip(rows.tolist(), perturb_captions(model, out_images[rows], picked, vocabulary, edits)):
            out_captions[i] = text
    pairs = NoisyPairs(out_images, out_captions, noisy, image_noisy.clone(), text_noisy.clone())
    log.info("pretrain: %d of %d pairs noisy (ratio %.2f; %d images, %d captions attacked)", int(noisy.sum()),
             len(images), ratio, int(image_noisy.sum()), int(text_noisy.sum()))
    return pairs


__all__ = ["Modalities", "NoisyPairs", "choose_noisy", "image_pgd", "make_noisy_pairs", "perturb_captions"]
