"""The serving check: the registered version loads elsewhere and computes what was evaluated.

Before any alias moves, ``register`` loads ``models:/<name>/<version>`` in a **fresh Python process**
(as a serving container would: nothing imported, nothing cached) with both ``mlflow.pytorch`` and
``mlflow.pyfunc``, predicts the test split, and compares with the evaluated ``model.pt`` (loaded
with :func:`medrobust.models.load_model`): the ``pytorch`` flavour's logits with its logits, and the
served ``python_function`` flavour's class probabilities (:mod:`medrobust.registry.pyfunc`) with
``softmax(logits / T)`` at the evaluation's temperature. A version that differs by more than
``tolerance`` (default 1e-5) fails the ``serving_check`` gate: the registry would otherwise serve a
model other than the one the evidence is about (a wrong artifact, an export or preprocessing
difference, a dependency that changed the maths, a temperature that was not stored).

Run as a module it is the fresh process: ``python -m medrobust.registry.serving URI IMAGES.npy OUT_DIR``
writes ``pytorch.npy`` and ``pyfunc.npy``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from medrobust.registry.gates import GateResult

TOLERANCE = 1e-5


def reference_logits(model_dir: str | Path, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The evaluated model's logits: ``model.pt`` loaded as evaluate loads it.

    Args:
        model_dir: the train stage's output (``model.pt`` + ``model.json``).
        images: float32 ``(N, C, H, W)`` in [0, 1].
        batch_size: images per forward pass.

    Returns:
        ``(N, classes)`` float32 logits.
    """
    import torch

    from medrobust.models import load_model

    model, _ = load_model(model_dir)
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + batch_size])).numpy()
                               for i in range(0, len(images), batch_size)]) if len(images) else np.zeros((0, 0))


def served_logits(uri: str, images: np.ndarray, timeout_s: float = 600) -> dict[str, np.ndarray]:
    """Logits of the registered model, loaded by ``mlflow.pytorch`` and ``mlflow.pyfunc`` in a fresh process.

    Args:
        uri: ``models:/<name>/<version>``.
        images: float32 ``(N, C, H, W)``.
        timeout_s: the most the process may take.

    Returns:
        ``{"pytorch": logits, "pyfunc": class probabilities}``.

    Raises:
        RuntimeError: the model did not load or predict; the message has the process's last output.
    """
    with tempfile.TemporaryDirectory(prefix="medrobust-serving-") as tmp:
        np.save(Path(tmp) / "images.npy", images)
        proc = subprocess.run([sys.executable, "-m", "medrobust.registry.serving", uri, str(Path(tmp) / "images.npy"),
                               tmp], capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"{uri} did not load or predict in a fresh process: {proc.stderr.strip()[-1500:]}")
        return {k: np.load(Path(tmp) / f"{k}.npy") for k in ("pytorch", "pyfunc")}


def serving_gate(uri: str, model_dir: str | Path, images: np.ndarray, tolerance: float = TOLERANCE,
                 temperature: float = 1.0) -> GateResult:
    """The ``serving_check`` gate: the registered version reproduces the evaluated model's outputs.

    Args:
        uri: ``models:/<name>/<version>``.
        model_dir: the evaluated model's folder.
        images: the test split's images.
        tolerance: the largest absolute difference allowed (logits; probabilities for the pyfunc).
        temperature: the evaluation's calibrated temperature (the served probabilities use it).

    Returns:
        The gate: ``value`` the largest difference over both loaders, ``threshold`` the tolerance.
    """
    name = "serving_check"
    logits = reference_logits(model_dir, images)
    try:
        served = served_logits(uri, images)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return GateResult(name, False, None, tolerance, str(exc), kind="check")
    expected = {"pytorch": logits, "pyfunc": _softmax(logits, temperature) if logits.size else logits}
    diffs = {}
    for loader, out in served.items():
        reference = expected[loader]
        if out.shape != reference.shape:
            return GateResult(name, False, None, tolerance,
                              f"{loader} returns shape {out.shape}, the evaluated model {reference.shape}", kind="check")
        diffs[loader] = float(np.abs(out - reference).max()) if reference.size else 0.0
    worst = max(diffs.values())
    ok = worst <= tolerance
    return GateResult(name, ok, worst, tolerance,
                      f"{uri} in a fresh process on {len(images)} test images: max |Δ| "
                      + ", ".join(f"{k} {'logits' if k == 'pytorch' else 'probabilities'} {v:.2e}"
                                  for k, v in diffs.items())
                      + (f" <= {tolerance:g}" if ok else f" > {tolerance:g}: the registry would serve another model"),
                      kind="check")


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _main(argv: list[str]) -> None:
    """The fresh process: load ``argv[0]`` both ways, predict ``argv[1]``, write to ``argv[2]``."""
    import mlflow.pyfunc
    import mlflow.pytorch
    import torch

    uri, images, out = argv[0], np.load(argv[1]), Path(argv[2])
    model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    try:
        model.eval()
    except NotImplementedError:  # a torch.export graph module: exported in eval mode, it has no train/eval switch
        pass
    with torch.no_grad():
        np.save(out / "pytorch.npy", np.asarray(model(torch.from_numpy(images)).detach().numpy(), dtype=np.float32))
    served = mlflow.pyfunc.load_model(uri).predict(images)  # a table: one probability column per class, then labels
    numeric = served.select_dtypes("number") if hasattr(served, "select_dtypes") else served
    np.save(out / "pyfunc.npy", np.asarray(numeric, dtype=np.float32))


if __name__ == "__main__":
    _main(sys.argv[1:])


__all__ = ["TOLERANCE", "reference_logits", "served_logits", "serving_gate"]
