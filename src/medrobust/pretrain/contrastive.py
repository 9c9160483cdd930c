"""Contrastive image–text pretraining of the tiny CLIP with open_clip's ``ClipLoss``.

Each epoch visits the pairs in an order drawn from a generator seeded with ``seed`` (a final batch of
one pair, which has no negatives, is skipped), minimises the symmetric InfoNCE loss of CLIP with AdamW
and a cosine schedule, and records the epoch's mean loss. :func:`contrastive_loss` measures the same
loss without training (eval mode, fixed order) — what a test or a report compares before and after.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from medrobust.pretrain.clip import ImageTextModel

log = logging.getLogger(__name__)


def _clip_loss() -> torch.nn.Module:
    from open_clip.loss import ClipLoss

    return ClipLoss()


@torch.no_grad()
def contrastive_loss(model: ImageTextModel, images: torch.Tensor, captions: list[str], batch_size: int = 64) -> float:
    """The mean ``ClipLoss`` over consecutive batches of ``batch_size`` pairs (eval mode; the mode is restored).

    Raises:
        ValueError: fewer than two pairs, or counts that differ.
    """
    if len(images) < 2 or len(images) != len(captions):
        raise ValueError(f"pretrain: the contrastive loss needs >= 2 pairs and one caption per image, got "
                         f"{len(images)} images and {len(captions)} captions")
    loss_fn, was_training = _clip_loss(), model.training
    model.eval()
    try:
        device = model.clip.logit_scale.device
        losses, weights = [], []
        for start in range(0, len(images), batch_size):
            x, text = images[start:start + batch_size], captions[start:start + batch_size]
            if len(x) < 2:
                continue
            losses.append(float(loss_fn(*model(x.to(device), model.tokens(text)))))
            weights.append(len(x))
    finally:
        model.train(was_training)
    return sum(l * w for l, w in zip(losses, weights)) / sum(weights)


def pretrain_clip(model: ImageTextModel, images: torch.Tensor, captions: list[str], *, epochs: int,
                  batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0,
                  desc: str = "pretrain") -> list[float]:
    """Train ``model`` in place on the pairs; returns each epoch's mean training loss.

    Args:
        model: the CLIP, on its device.
        images: ``[N, C, H, W]`` in [0, 1] (any device; batches are moved to the model's).
        captions: N captions.
        epochs: passes over the pairs (≥ 1).
        batch_size: pairs per step (≥ 2: the other pairs of a batch are the negatives).
        lr: AdamW's learning rate (cosine-annealed to 0 over the run).
        weight_decay: AdamW's weight decay.
        seed: seeds the order of the pairs.
        desc: the progress bar's and the log line's name.

    Returns:
        The mean loss of each epoch. The model is left in eval mode.

    Raises:
        ValueError: ``epochs`` < 1, ``batch_size`` < 2, fewer than two pairs, or counts that differ.
    """
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"pretrain: epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if len(images) < 2 or len(images) != len(captions):
        raise ValueError(f"pretrain: need >= 2 pairs and one caption per image, got {len(images)} images and "
                         f"{len(captions)} captions")
    device = model.clip.logit_scale.device
    tokens = model.tokens(captions).cpu()
    loss_fn = _clip_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(images) // batch_size + (len(images) % batch_size > 1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total, count = 0.0, 0
        bar = tqdm(range(0, len(images), batch_size), desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for start in bar:
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            loss = loss_fn(*model(images[idx].to(device), tokens[idx].to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP clamps the learned temperature at 100
                model.clip.logit_scale.clamp_(0, 4.6052)
            total, count = total + loss.item() * len(idx), count + len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")
        history.append(total / count)
        log.info("%s: epoch %d/%d, contrastive loss %.4f", desc, epoch + 1, epochs, history[-1])
    model.eval()
    return history


__all__ = ["contrastive_loss", "pretrain_clip"]
