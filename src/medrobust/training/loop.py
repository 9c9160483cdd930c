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

from medrobust.data.shards import ArraySplit
from medrobust.defenses import TrainingMethod
from medrobust.models.inference import accuracy
from medrobust.training import resume
from medrobust.training.config import OptimConfig
from medrobust.training.distributed import (SINGLE, World, broadcast_buffers, broadcast_state, shard, sum_gradients,
                                            sum_over_ranks)

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class History:
    """What :func:`train_model` returns.

    Attributes:
        epochs: one metrics mapping per epoch (``train_loss``, ``train_<stat>``, ``val_accuracy``, and
            ``val_select`` when a selection score was given).
        best_epoch: the epoch (from 1) whose weights the model holds at the end: the best
            ``val_select`` (the latest of equals), or the last epoch without a score.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam over the parameters that train, as ``train.optim`` says.

    Args:
        model: the model; only parameters with ``requires_grad`` are optimised.
        cfg: ``train.optim`` (``name``, ``lr``, ``weight_decay``, ``momentum``).

    Returns:
        The optimiser (no scheduler: :func:`train_model` adds the cosine decay).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_model(
    model: nn.Module,
    method: TrainingMethod,
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
    select: Callable[[nn.Module], float] | None = None,
    world: World = SINGLE,
    resume_dir: Path | None = None,
    resume_key: str = "",
) -> History:
    """Train ``model`` in place with ``method``'s loss.

    Each epoch visits ``train`` in a seeded random order (a final batch of one sample is skipped, for
    batch norm), then steps the cosine learning-rate schedule and, with ``val``, measures validation
    accuracy. The model is left in eval mode.

    Args:
        model: the model, already on its device (batches are moved there).
        method: the training method, whose ``loss(model, x, y)`` gives the loss and its stats.
        train: the training split.
        val: the validation split, or None (no ``val_accuracy``).
        epochs: number of epochs (also the cosine schedule's period).
        batch_size: images per step.
        optim: ``train.optim`` (:func:`make_optimizer`).
        seed: seeds the generator of the data order and the flips.
        checkpoint_dir: if given, ``epoch_NNN.pt`` (model + optimiser state) is written every epoch.
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch (``epoch`` counts from 1).
        hflip: flip each image horizontally with probability 0.5 (``[N, C, H, W]`` batches).
        clean_warmup_epochs: the first epochs minimise the method's ``warmup_loss`` (clean cross-entropy
            unless the method keeps its own machinery there: a warm start, as adversarial objectives at
            full ε can stall a network trained from scratch at the constant predictor); then the
            method's ``end_warmup`` runs once and its own loss takes over, its epoch counter starting there.
        desc: the name in the progress bar and the log lines.
        select: scores the model on validation data after each epoch (e.g. robust accuracy under a
            cheap PGD); the model ends with the weights of the best-scoring epoch (the latest of
            equals), not the last. None: the last epoch's weights.
        world: this process's rank among data-parallel processes (:mod:`medrobust.training.distributed`):
            each rank trains on its shard of every global batch of ``batch_size`` and gradients are
            averaged; only rank 0 validates, selects, checkpoints and calls ``on_epoch``.
        resume_dir: a folder that survives a kill (:mod:`medrobust.training.resume`): the state after each
            epoch is saved there, and a state saved under ``resume_key`` is resumed from, bit for bit
            (``on_epoch`` is called again for the epochs it already holds); the method's own state
            (its generators, running averages) is saved and restored with it.
        resume_key: what the saved state must have been saved for (the run's params and data).

    Returns:
        Per-epoch metrics (mean loss, the method's stats, validation accuracy) and the epoch kept.
    """
    device = next(model.parameters()).device
    opt = make_optimizer(model, optim)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    history = History()
    n = len(train)
    warmup = min(clean_warmup_epochs, epochs)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    first = 0
    saved = resume.load(resume_dir, resume_key)
    if saved is not None:
        resume.restore(saved, model=model, optimizer=opt, scheduler=sched, generator=gen, method=method)
        first, history.epochs, history.best_epoch = int(saved["epoch"]), list(saved["history"]), saved["best_epoch"]
        if saved["best_state"] is not None:
            best = (float(saved["best_score"]), saved["best_state"])
        log.info("%s: resuming from epoch %d of %d (%s)", desc, first, epochs, resume_dir)
        if on_epoch is not None and world.is_main:
            for i, m in enumerate(history.epochs):
                on_epoch(i + 1, m)
    broadcast_state(model, world)
    for epoch in range(first, epochs):
        warming = epoch < warmup
        if not warming:
            if warmup > 0 and epoch == warmup:  # the warm-up just ended: the method sets up what depends on the trained network
                method.end_warmup(model, train.x, train.y)
                broadcast_state(model, world)
            method.start_epoch(epoch - warmup, epochs - warmup)
        step_loss = method.warmup_loss if warming else method.loss
        model.train()
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        batches = range(0, n, batch_size)
        for start in tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, mininterval=5):
            idx = order[start : start + batch_size]
            if len(idx) < 2 * world.size:  # batch norm needs > 1 sample (on every rank)
                continue
            # the global batch's flips, then this rank's shard of both (the same draws as one process)
            flip = (torch.rand(len(idx), generator=gen) < 0.5) if hflip else None
            mine = shard(torch.arange(len(idx)), world)
            x, y = train.x[idx[mine]].to(device), train.y[idx[mine]].to(device)
            if flip is not None:
                x = torch.where(flip[mine].to(device).view(-1, 1, 1, 1), x.flip(-1), x)
            loss, stats = step_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            if world.distributed:  # this rank's share of the global batch's mean loss; gradients summed over ranks
                (loss * (len(mine) / len(idx))).backward()
                sum_gradients(model, world)
            else:
                loss.backward()
            opt.step()
            broadcast_buffers(model, world)
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v * len(mine)
        sched.step()
        sums = sum_over_ranks(sums, world, device)
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v / n for k, v in sums.items()}
        if not world.is_main:  # rank 0 validates, selects, checkpoints and reports
            history.epochs.append(metrics)
            continue
        if val is not None:
            metrics["val_accuracy"] = accuracy(model, val.x, val.y)
        if select is not None:
            metrics["val_select"] = score = float(select(model))
            if best is None or score >= best[0]:
                best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
                history.best_epoch = epoch + 1
        else:
            history.best_epoch = epoch + 1
        history.epochs.append(metrics)
        log.info("%s epoch %d/%d: %s", desc, epoch + 1, epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict()},
                       checkpoint_dir / f"epoch_{epoch + 1:03d}.pt")
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
        if resume_dir is not None:
            resume.save(resume_dir, key=resume_key, epoch=epoch + 1, model=model, optimizer=opt, scheduler=sched,
                        generator=gen, history=history.epochs, best_epoch=history.best_epoch, best=best,
                        method=method.state_dict())
    if world.is_main and best is not None and history.best_epoch != epochs:
        model.load_state_dict(best[1])
        log.info("%s: kept epoch %d of %d (best validation selection score %.4f)", desc, history.best_epoch, epochs,
                 best[0])
    model.eval()
    return history
