"""The shared training loop: clean warm-up epochs before the method's own loss."""

from __future__ import annotations

import pandas as pd
import torch

from medrobust.training import OptimConfig
from medrobust.data.shards import ArraySplit
from medrobust.defenses.base import TrainingMethod
from medrobust.defenses.standard import Standard
from medrobust.models import ModelSpec, build_model
from medrobust.training import train_model


class Recorder(TrainingMethod):
    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def loss(self, model, x, y):
        self.calls.append((self.epoch, self.total_epochs))
        return Standard().loss(model, x, y)


def test_clean_warmup_epochs_run_clean_ce_then_the_method_with_its_own_epoch_count():
    torch.manual_seed(0)
    split = ArraySplit(torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4), pd.DataFrame({"i": range(8)}))
    rec = Recorder()
    train_model(build_model(ModelSpec("small_cnn", 2, width=4)), rec, split, None, epochs=3, batch_size=4,
                optim=OptimConfig(), seed=0, clean_warmup_epochs=2)
    assert rec.calls == [(0, 1), (0, 1)]  # only the last epoch (2 batches), counted as epoch 0 of 1
    rec2 = Recorder()
    train_model(build_model(ModelSpec("small_cnn", 2, width=4)), rec2, split, None, epochs=2, batch_size=4,
                optim=OptimConfig(), seed=0)
    assert rec2.calls == [(0, 2), (0, 2), (1, 2), (1, 2)]
