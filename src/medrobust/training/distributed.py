"""Data-parallel training over several processes (``train.distributed``), launched by ``torchrun``.

Every rank holds the whole model and draws the same global data order and flips as one process
would (the same seeded generator); each global batch is split into contiguous shards, one per rank
(``numpy.array_split`` sizes: they differ by at most one). Each rank runs the training method on its
shard alone — its own adversarial examples, its own extra forward passes — and backpropagates its
shard's mean loss. Gradients are then averaged with one ``all_reduce`` per step, each rank's gradient
weighted by its shard's share of the batch, so the update equals the single-process update on the
whole global batch (for a per-sample mean loss) whatever the split.

This is DistributedDataParallel's algorithm (gradient all-reduce, parameters broadcast from rank 0
at the start, buffers broadcast from rank 0 after each step), done with ``torch.distributed``
directly rather than through the ``DistributedDataParallel`` wrapper: adversarial training methods
run several forward/backward passes per step to craft their examples (PGD, TRADES, ...), which the
wrapper's reducer would try to synchronise (or reject) on every one.

Batch norm: by default each rank normalises with its shard's statistics and rank 0's running
statistics are kept (DDP's ``broadcast_buffers``). ``train.ddp.sync_bn`` normalises with the
statistics of the whole global batch instead: :class:`torch.nn.SyncBatchNorm` on CUDA, and on CPU
(gloo, which PyTorch's SyncBatchNorm refuses) :class:`GlobalBatchNorm2d`, which all-reduces the
per-channel sums in the forward pass and the gradient sums in the backward pass. With it (and the
attacks, which craft examples in eval mode), a run on W ranks computes what one process computes on
the global batch, up to floating-point rounding (``tests/training/test_distributed.py``).

The loss each rank backpropagates is its shard's mean loss times its share of the global batch, and
the gradients are summed over ranks: the gradient of the global batch's mean loss, also through
batch statistics shared across ranks.

Only rank 0 validates, selects the epoch, checkpoints, logs to MLflow and writes outputs
(:mod:`medrobust.stages.train`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World:
    """The world ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process without them)."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    return World(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``torch.distributed.run``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def init(world: World, backend: str = "auto") -> str:
    """Join the process group (``env://``); returns the backend (``nccl`` with CUDA, else ``gloo``, for auto)."""
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    return backend


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous part of a global batch (``array_split`` sizes)."""
    if not world.distributed:
        return idx
    bounds = np.cumsum([0, *[len(p) for p in np.array_split(np.arange(len(idx)), world.size)]])
    return idx[bounds[world.rank]: bounds[world.rank + 1]]


def broadcast_state(model: nn.Module, world: World) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    if not world.distributed:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def broadcast_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every rank, as DDP's ``broadcast_buffers``."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def sum_gradients(model: nn.Module, world: World) -> None:
    """``grad ← Σ_ranks grad_r`` in place (each rank backpropagated its share of the global mean loss)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    # a parameter the method did not use on this rank (None) still joins the sum as zeros
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


class _GlobalBatchStats(torch.autograd.Function):
    """Batch norm over the union of every rank's batch: all-reduced sums forward, all-reduced gradient sums backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        import torch.distributed as dist

        c, dims = x.shape[1], [0, *range(2, x.dim())]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / c])])
        dist.all_reduce(stats)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c, *[1] * (x.dim() - 2)]
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd, total)
        ctx.mark_non_differentiable(mean, var)
        return xhat * weight.view(shape) + bias.view(shape), mean, var * total / (total - 1).clamp_min(1)

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):  # type: ignore[override]
        import torch.distributed as dist

        xhat, weight, invstd, total = ctx.saved_tensors
        c, dims = gy.shape[1], [0, *range(2, gy.dim())]
        shape = [1, c, *[1] * (gy.dim() - 2)]
        local = torch.cat([gy.sum(dims), (gy * xhat).sum(dims)])
        grad_bias, grad_weight = local[:c].clone(), local[c:].clone()
        dist.all_reduce(local)
        sum_gy, sum_gy_xhat = local[:c].view(shape), local[c:].view(shape)
        gx = (weight * invstd).view(shape) / total * (total * gy - sum_gy - xhat * sum_gy_xhat)
        return gx, grad_weight, grad_bias, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` whose training-mode statistics are those of every rank's batch together.

    The running statistics get the global mean and the unbiased global variance, so they stay equal on
    every rank. In eval mode, or outside a process group, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        y, mean, var = _GlobalBatchStats.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var, alpha=m)
        return y


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` normalised over the global batch: SyncBatchNorm on CUDA, else global BN."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(device)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            sync_batch_norm(child, device)
    return model


def plain_batch_norm(model: nn.Module) -> nn.Module:
    """SyncBatchNorm / GlobalBatchNorm2d layers back to BatchNorm2d (the saved model runs anywhere), in place."""
    for name, child in model.named_children():
        if isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm2d)):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(model, name, bn.to(child.weight.device) if child.weight is not None else bn)
        else:
            plain_batch_norm(child)
    return model


def sum_over_ranks(values: Mapping[str, float], world: World, device: torch.device | str = "cpu") -> dict[str, float]:
    """Per-key sums over every rank (the same keys on each), in float64 (on ``device``: CUDA for NCCL)."""
    if not world.distributed:
        return dict(values)
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


__all__ = ["SINGLE", "GlobalBatchNorm2d", "World", "broadcast_buffers", "broadcast_state", "init", "plain_batch_norm",
           "shard", "shutdown", "sum_gradients", "sum_over_ranks", "sync_batch_norm", "under_torchrun",
           "world_from_env"]
