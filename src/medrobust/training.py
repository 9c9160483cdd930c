"""The training loop shared by every method (and by advgen's surrogate).

It owns data order (a seeded generator), the optimiser, per-epoch validation, checkpoints and a
per-epoch callback (the train stage logs to MLflow through it). The method decides the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from medrobust.config import OptimConfig
from medrobust.data.shards import ArraySplit
from medrobust.defenses import Defense
from medrobust.defenses.standard import Standard

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (on the CPU) for ``x`` in eval mode, batched on the model's device; mode restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    return float((predict_logits(model, x, batch_size).argmax(1) == y.cpu()).float().mean())


def train_model(
    model: nn.Module,
    defense: Defense,
    train: ArraySplit,
    val: ArraySplit | None,
    *,
    epochs: int,
    batch_size: int,
    optim: OptimConfig,
    seed: int,
    checkpoint_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    hflip: bool = False,
    clean_warmup_epochs: int = 0,
    desc: str = "train",
) -> History:
    """Train ``model`` in place with ``defense``'s loss.

    Args:
        checkpoint_dir: if given, ``epoch_NNN.pt`` (model + optimiser state) is written every epoch.
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch.
        clean_warmup_epochs: the first epochs minimise clean cross-entropy (a warm start: adversarial
            objectives at full ε can stall a network trained from scratch at the constant predictor);
            the method's own loss takes over afterwards, and its epoch counter starts there.

    Returns:
        Per-epoch metrics (mean loss, the method's stats, validation accuracy).
    """
    device = next(model.parameters()).device
    opt = make_optimizer(model, optim)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    history = History()
    n = len(train)
    warmup = min(clean_warmup_epochs, epochs)
    clean = Standard()
    for epoch in range(epochs):
        method = clean if epoch < warmup else defense
        if method is defense:
            defense.start_epoch(epoch - warmup, epochs - warmup)
        model.train()
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        batches = range(0, n, batch_size)
        for start in tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, mininterval=5):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # batch norm needs > 1 sample
                continue
            x, y = train.x[idx].to(device), train.y[idx].to(device)
            if hflip:
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss, stats = method.loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        sched.step()
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v / n for k, v in sums.items()}
        if val is not None:
            metrics["val_accuracy"] = accuracy(model, val.x, val.y)
        history.epochs.append(metrics)
        log.info("%s epoch %d/%d: %s", desc, epoch + 1, epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict()},
                       checkpoint_dir / f"epoch_{epoch + 1:03d}.pt")
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
    model.eval()
    return history
