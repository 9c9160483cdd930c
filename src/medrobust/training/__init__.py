"""Training: the loop every method shares, building models and methods from params, and ``train:``.

* :mod:`.config` — ``train:`` (:class:`TrainConfig`, with one settings mapping per training method)
  and the model/optimiser sections advgen's surrogate shares;
* :mod:`.build` — :func:`model_spec`, :func:`build_method`, :func:`build_surrogate`;
* :mod:`.loop` — :func:`train_model` (data order, optimiser, checkpoints, per-epoch callback);
* :mod:`.plots` — :func:`plot_history`.
"""

from medrobust.training.build import build_method, build_surrogate, model_spec
from medrobust.training.config import ModelConfig, OptimConfig, SurrogateConfig, TrainConfig
from medrobust.training.loop import History, make_optimizer, train_model
from medrobust.training.plots import plot_history

__all__ = ["History", "ModelConfig", "OptimConfig", "SurrogateConfig", "TrainConfig", "build_method",
           "build_surrogate", "make_optimizer", "model_spec", "plot_history", "train_model"]
