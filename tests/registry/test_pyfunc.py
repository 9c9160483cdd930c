"""The served champion: a pyfunc that takes base64 DICOM (decoded as ingest decodes) and [0, 1] arrays, and
returns calibrated probabilities by class name; in process, and through a real ``mlflow models serve``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

NAME = "medrobust-classifier"


@pytest.fixture
def store(pipeline_run, tmp_path, monkeypatch):
    """A copy of the session's sqlite registry, whose @champion is the session pipeline's version.

    The URI is set both ways: in the environment (what ``mlflow models serve`` reads) and in MLflow's
    process-wide setting, which an earlier test's stage (``tracking.configure``) may have pointed elsewhere
    and which wins over the environment.
    """
    import mlflow
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copy(pipeline_run.tracking_uri.removeprefix("sqlite:///"), db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    version = json.loads(pipeline_run.decision.read_text())["version"]
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", version)
    yield uri
    mlflow.set_tracking_uri(previous)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _dicoms(pipeline_run, n: int = 6) -> list[Path]:
    files = sorted((pipeline_run.raw / "dicom").rglob("*.dcm"))
    assert len(files) >= n
    return files[:n]


def _expected(pipeline_run, images: np.ndarray) -> np.ndarray:
    """softmax(logits / T) of the evaluated model.pt at evaluate's temperature."""
    from medrobust.registry.serving import reference_logits

    t = json.loads((pipeline_run.evaluation / "calibration.json").read_text())["temperature"]
    z = reference_logits(pipeline_run.model, images).astype(np.float64) / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_champion_carries_both_flavours_and_the_ingest_settings(pipeline_run, store):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    flavors = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    assert flavors["python_function"]["loader_module"] == "medrobust.registry.pyfunc"
    assert "pytorch" in flavors
    config = json.loads((local / "medrobust" / "preprocessing.json").read_text())
    p = pipeline_run.params
    assert config["image_size"] == p.data.image_size and config["dicom"] == p.data.dicom.model_dump(mode="json")
    assert config["classes"] == list(p.data.classes) and config["calibrated"]
    assert config["temperature"] == json.loads((pipeline_run.evaluation / "calibration.json").read_text())["temperature"]
    from medrobust.utils import sha256_file

    assert config["model_sha256"] == sha256_file(pipeline_run.model / "model.pt") == sha256_file(
        local / "medrobust" / "model.pt")


def test_arrays_and_dicom_give_the_evaluated_models_calibrated_probabilities(pipeline_run, store):
    import mlflow

    from medrobust.data.dicom import decode_dicom
    from medrobust.data.shards import load_split

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    classes = list(pipeline_run.params.data.classes)
    test = load_split(pipeline_run.dataset, "test").x.numpy()
    out = model.predict(test)
    assert list(out.columns) == [*classes, "prediction", "error"]
    np.testing.assert_allclose(out[classes].to_numpy(), _expected(pipeline_run, test), atol=1e-6)
    threshold = json.loads((pipeline_run.evaluation / "calibration.json").read_text())["threshold"]
    assert list(out["prediction"]) == [classes[int(p >= threshold)] for p in out[classes[1]]]
    assert (out["error"] == "").all()
    # DICOM files of the embedded data: decoded exactly as ingest decoded them (each is one of the ingested images)
    files = _dicoms(pipeline_run)
    got = model.predict(pd.DataFrame({"dicom": [_b64(f.read_bytes()) for f in files]}))
    p = pipeline_run.params.data
    pixels = np.stack([decode_dicom(f.read_bytes(), p.image_size, p.dicom).pixels for f in files])[:, None]
    ingested = np.concatenate([load_split(pipeline_run.dataset, s).x.numpy() for s in ("train", "val", "test")])
    assert all((ingested == x).all(axis=(1, 2, 3)).any() for x in pixels)
    np.testing.assert_allclose(got[classes].to_numpy(), _expected(pipeline_run, pixels), atol=1e-6)
    # the same through the dict form the REST 'inputs' key gives
    again = model.predict({"dicom": np.array([_b64(f.read_bytes()) for f in files])})
    pd.testing.assert_frame_equal(again, got)


def test_a_bad_file_gets_its_reason_and_the_rest_of_the_batch_is_scored(pipeline_run, store):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    good = _dicoms(pipeline_run, 1)[0].read_bytes()
    out = model.predict(pd.DataFrame({"dicom": [_b64(good), "***not base64***", _b64(b"plain text, no DICOM")]}))
    classes = list(pipeline_run.params.data.classes)
    assert out.loc[0, "error"] == "" and np.isfinite(out.loc[0, classes].astype(float)).all()
    assert out.loc[1, "error"].startswith("bad_input: dicom: not base64")
    assert out.loc[2, "error"].split(":")[0] in {"not_dicom", "unreadable"}, out.loc[2, "error"]
    assert out.loc[1:, classes].isna().all().all() and out.loc[1:, "prediction"].isna().all()
    from medrobust.registry.pyfunc import ServingInputError

    with pytest.raises(ServingInputError, match=r"must be \[N, 1, 32, 32\]"):
        model.predict(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ServingInputError, match=r"in \[0, 1\]"):
        model.predict(np.full((1, 1, 32, 32), 255.0, np.float32))


def test_served_weights_that_are_not_the_registered_ones_do_not_load(pipeline_run, store, tmp_path):
    import mlflow

    from medrobust.registry.pyfunc import _load_pyfunc

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path)))
    other = local / "medrobust" / "model.pt"
    data = bytearray(other.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    other.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="not the evaluated ones"):
        _load_pyfunc(str(local / "medrobust"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.integration
def test_mlflow_models_serve_answers_dicom_and_arrays_as_the_model_does_in_process(pipeline_run, store, tmp_path):
    """A real `mlflow models serve -m models:/medrobust-classifier@champion --env-manager local` process."""
    import mlflow
    from pydicom.data import get_testdata_file

    from medrobust.data.shards import load_split

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             f"models:/{NAME}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                             "-w", "1"], stdout=log, stderr=subprocess.STDOUT,
                            # mlflow execs `uvicorn` by name: this interpreter's scripts folder first on PATH
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping in 120 s: " + (tmp_path / "serve.log").read_text()[-3000:])
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        classes = list(pipeline_run.params.data.classes)
        # pydicom's own CT test file (another modality, 128², rescale slope/intercept) and the embedded data's files
        files = [Path(get_testdata_file("CT_small.dcm")), *_dicoms(pipeline_run, 3)]
        table = pd.DataFrame({"dicom": [_b64(f.read_bytes()) for f in files]})
        served = pd.DataFrame(_post(f"{base}/invocations", {"dataframe_records": table.to_dict("records")})["predictions"])
        local = model.predict(table)
        assert (served["error"] == "").all(), served["error"].tolist()
        np.testing.assert_allclose(served[classes].to_numpy(float), local[classes].to_numpy(), atol=1e-6)
        assert served["prediction"].tolist() == local["prediction"].tolist()
        # arrays in [0, 1]: the test split's first images
        x = load_split(pipeline_run.dataset, "test").x.numpy()[:4]
        served = pd.DataFrame(_post(f"{base}/invocations", {"inputs": x.tolist()})["predictions"])
        np.testing.assert_allclose(served[classes].to_numpy(float), _expected(pipeline_run, x), atol=1e-5)
        # a bad request gets a clear 400, not a traceback
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"{base}/invocations", {"dataframe_records": [{"pixels": "x"}]})
        assert err.value.code == 400 and "dicom" in err.value.read().decode()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
