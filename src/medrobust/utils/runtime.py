"""The process: logging, seeding, device selection."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Third-party loggers that are chatty at INFO; the CLI and the components raise them to WARNING.
NOISY_LOGGERS = ("great_expectations", "alembic", "mlflow", "urllib3", "matplotlib", "kfp")


def setup_logging(level: int | str = logging.INFO, quiet: tuple[str, ...] = NOISY_LOGGERS) -> None:
    """Configure the root logger once (the CLI and the Kubeflow components call this).

    Args:
        level: the root level.
        quiet: loggers raised to WARNING.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels.

    Args:
        seed: any non-negative integer (NumPy gets it modulo 2**32).
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """The torch device params.yaml's ``device`` names.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.

    Returns:
        The device.

    Raises:
        RuntimeError: ``cuda`` was asked for and no CUDA GPU is available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested in params.yaml but no CUDA GPU is available; use auto or cpu")
    return torch.device(name)
