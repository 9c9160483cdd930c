"""The served model: one MLflow model with a ``pytorch`` flavour and a medrobust ``python_function`` flavour.

``register`` logs it (:func:`log_serving_model`) into the train run and registers *it*, so
``mlflow models serve -m models:/medrobust-classifier@champion`` serves what was evaluated:

* **Inputs.** A DataFrame (REST ``dataframe_records`` / ``dataframe_split``) or a dict (``inputs``)
  with a column ``dicom`` of base64 DICOM files, or ``image`` of base64 PNG/JPEG files; or a float
  array ``[N, C, H, W]`` (or ``[N, H, W]``) in [0, 1] at the model's input size (REST ``inputs`` /
  ``instances``).
* **Decoding.** Files go through ingest's own decoder (:func:`medrobust.data.items.decode_pixels`)
  with this model's ``data.image_size`` and ``data.dicom`` (rescale slope/intercept, the VOI window
  or LUT, MONOCHROME1 inversion, colour to luma, pad and resize), stored next to the weights in
  ``preprocessing.json``, so serving decodes exactly as ingest did for training and evaluation.
* **Outputs.** A DataFrame: one column per class (``data.classes``) with the calibrated probability
  ``softmax(logits / T)`` (T from evaluate's ``calibration.json``; 1 when none is stored),
  ``prediction`` (the class name: at the validation operating point for a binary task, else the
  argmax) and ``error``. A file that cannot be decoded gets NaN probabilities and its ingest
  reason in ``error``; the rest of the batch is scored (one bad item never stops a batch).
* **Integrity.** The folder holds ``model.pt`` (the state dict, loaded with ``weights_only=True``),
  ``model.json`` and ``preprocessing.json`` with ``model.pt``'s SHA-256; loading refuses weights
  that do not hash to it. Nothing is unpickled.

The ``pytorch`` flavour (``mlflow.pytorch.load_model``) is the same network exported with
``torch.export``: raw logits, for those who want the module.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

SERVING_DIR = "medrobust"             # the pyfunc flavour's data folder inside the MLflow model
PREPROCESSING_FILE = "preprocessing.json"
FILE_COLUMNS = {"dicom": "dicom", "image": "image"}  # input column -> ingest's item kind
FORMAT = 1


class ServingInputError(ValueError):
    """The request is not one the served model can read; the message says what it accepts."""


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def preprocessing(data: Any, calibration: dict[str, Any] | None, model_sha256: str) -> dict[str, Any]:
    """``preprocessing.json``: how inputs become the model's images, and how logits become the answer.

    Args:
        data: the ``data`` section of the params the model was trained and evaluated with.
        calibration: evaluate's ``calibration.json`` (temperature, threshold), or None.
        model_sha256: SHA-256 of ``model.pt``.
    """
    cal = calibration or {}
    return {"format": FORMAT, "image_size": int(data.image_size), "classes": list(data.classes),
            "dicom": data.dicom.model_dump(mode="json"), "max_pixels": int(data.max_pixels), "temperature": float(cal.get("temperature") or 1.0),
            "threshold": cal.get("threshold"), "operating_point": cal.get("rule"),
            "calibrated": calibration is not None, "model_sha256": model_sha256}


class ServedClassifier:
    """What the pyfunc flavour loads: decode, forward, calibrate, name (see the module docstring)."""

    def __init__(self, model: Any, config: dict[str, Any], channels: int = 1):
        self.model, self.config, self.channels = model, config, channels
        self.classes = list(config["classes"])
        self.size = int(config["image_size"])

    def _decode(self, kind: str, value: Any) -> np.ndarray:
        from medrobust.data.dicom import MAX_PIXELS, DicomConfig
        from medrobust.data.items import decode_pixels

        try:
            raw = base64.b64decode("".join(value.split()), validate=True) if isinstance(value, str) else bytes(value)
        except (binascii.Error, TypeError, ValueError):
            raise ServingInputError(f"{kind}: not base64 (send each file as a base64 string)") from None
        pixels, _header, _facts = decode_pixels(kind, raw, None, True, self.size,
                                                DicomConfig.model_validate(self.config["dicom"]),
                                                int(self.config.get("max_pixels", MAX_PIXELS)))
        return pixels  # the header holds identifiers: dropped here, never returned or logged

    def _arrays(self, data: Any) -> np.ndarray:
        x = np.asarray(data, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        want = (self.channels, self.size, self.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ServingInputError(f"an array input must be [N, {', '.join(map(str, want))}] (or [N, {self.size}, "
                                    f"{self.size}]) in [0, 1], got shape {list(x.shape)}; send files as base64 in a "
                                    f"'dicom' or 'image' column instead")
        if not np.all(np.isfinite(x)) or x.min(initial=0) < 0 or x.max(initial=0) > 1:
            raise ServingInputError("array inputs must be finite pixel values in [0, 1] (normalisation is inside "
                                    "the model)")
        return x

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Probabilities by class name, the prediction and a per-row error (see the module docstring)."""
        import pandas as pd

        from medrobust.data.sources.base import Rejected

        if isinstance(model_input, dict):
            model_input = pd.DataFrame({k: list(np.atleast_1d(v)) for k, v in model_input.items()}) \
                if set(model_input) & set(FILE_COLUMNS) else np.asarray(next(iter(model_input.values())))
        errors: list[str] = []
        if isinstance(model_input, pd.DataFrame):
            if self.channels != 1:
                raise ServingInputError(f"this model takes {self.channels}-channel arrays; files decode to one grey "
                                        "channel")
            columns = [c for c in FILE_COLUMNS if c in model_input.columns]
            if len(columns) != 1:
                raise ServingInputError(f"a table input needs exactly one of the columns {sorted(FILE_COLUMNS)} "
                                        f"(base64 files); got {list(model_input.columns)}")
            images: list[np.ndarray | None] = []
            for value in model_input[columns[0]]:
                try:
                    images.append(self._decode(FILE_COLUMNS[columns[0]], value))
                    errors.append("")
                except (Rejected, ServingInputError) as exc:
                    images.append(None)
                    errors.append(f"{getattr(exc, 'reason', 'bad_input')}: {exc}")
            ok = [i for i, im in enumerate(images) if im is not None]
            x = np.stack([images[i] for i in ok])[:, None] if ok else np.zeros((0, 1, self.size, self.size), np.float32)
        else:
            x = self._arrays(model_input)
            ok, errors = list(range(len(x))), [""] * len(x)
        probs = np.full((len(errors), len(self.classes)), np.nan)
        if len(x):
            probs[ok] = _softmax(self._logits(x), self.config["temperature"])
        out = pd.DataFrame(probs, columns=self.classes)
        out["prediction"] = [self._name(p) if e == "" else None for p, e in zip(probs, errors)]
        out["error"] = errors
        return out

    def _name(self, p: np.ndarray) -> str:
        t = self.config.get("threshold")
        if t is not None and len(self.classes) == 2:
            return self.classes[int(p[1] >= t)]
        return self.classes[int(np.argmax(p))]

    def _logits(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.model(torch.from_numpy(x[i:i + batch_size])).numpy()
                                   for i in range(0, len(x), batch_size)]).astype(np.float64)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ServedClassifier:
    """The pyfunc loader MLflow calls with the flavour's data folder."""
    from medrobust.models import load_model
    from medrobust.utils import sha256_file

    folder = Path(data_path)
    config = json.loads((folder / PREPROCESSING_FILE).read_text())
    actual = sha256_file(folder / "model.pt")
    if actual != config["model_sha256"]:
        raise RuntimeError(f"{folder / 'model.pt'} hashes to {actual[:12]}…, not the registered "
                           f"{config['model_sha256'][:12]}…: the served weights are not the evaluated ones")
    model, spec = load_model(folder)
    return ServedClassifier(model, config, spec.in_channels)


def save_model(path: str, mlflow_model: Any, model_dir: str, config: dict[str, Any], pip_requirements: list[str],
               input_example: np.ndarray) -> None:
    """The flavour module's ``save_model`` for :meth:`mlflow.models.Model.log`: both flavours into ``path``."""
    import mlflow.pytorch
    import mlflow.pyfunc

    from medrobust.models import load_model

    module, _ = load_model(model_dir)
    mlflow.pytorch.save_model(module, path, mlflow_model=mlflow_model, input_example=input_example,
                              pip_requirements=pip_requirements)
    data = Path(path) / SERVING_DIR
    data.mkdir()
    for name in ("model.pt", "model.json"):
        shutil.copyfile(Path(model_dir) / name, data / name)
    (data / PREPROCESSING_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    env = mlflow_model.flavors["python_function"].get("env")
    mlflow_model.flavors.pop("python_function")
    mlflow_model.signature = None  # the pyfunc takes tables of files as well as arrays: no single tensor schema
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module=__name__, data=SERVING_DIR,
                               conda_env=(env or {}).get("conda"), python_env=(env or {}).get("virtualenv"))
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_serving_model(model_dir: str | Path, config: dict[str, Any], pip_requirements: list[str]) -> str:
    """Log the served model into the active run; returns its ``models:/<model id>`` URI.

    Args:
        model_dir: the train stage's output (``model.pt``, ``model.json``).
        config: :func:`preprocessing`'s result.
        pip_requirements: the model environment's requirements.
    """
    import sys

    from mlflow.models import Model

    channels = json.loads((Path(model_dir) / "model.json").read_text()).get("in_channels", 1)
    # a noise image of the right shape: no patient pixels in the model's input example
    size = config["image_size"]
    example = np.random.default_rng(0).random((2, channels, size, size), dtype=np.float32)
    info = Model.log(artifact_path=None, name="serving", flavor=sys.modules[__name__], model_dir=str(model_dir), config=config,
                     pip_requirements=pip_requirements, input_example=example)
    return info.model_uri


__all__ = ["PREPROCESSING_FILE", "SERVING_DIR", "ServedClassifier", "ServingInputError", "log_serving_model",
           "preprocessing", "save_model"]
