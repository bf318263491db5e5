"""A run's model is usable (issue 15): runs:/<id>/model via pyfunc and `mlflow models serve`, the registry, datasets.

One real MNIST run (LeNet-5, a few dozen steps, a real SQLite store) serves every test in this module.
`tracking.log_model=false` and a diverged run logging no model: tests/test_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cnnlab.run.train import train
from cnnlab.schema import check_config

N_TEST = 2000
REGISTERED = "cnnlab-test-lenet5"
MNIST = ["model=lenet5", "optimizer=adam", "trainer.steps=60", "trainer.eval_every=60", "trainer.verbose=0",
         "dataset.train_size=8000", "dataset.val_size=1000", f"dataset.test_size={N_TEST}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    folder = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{folder}/mlflow.db"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*MNIST, f"tracking.uri={uri}", f"tracking.register_as={REGISTERED}"])
    result = train(check_config(cfg))
    from mlflow.tracking import MlflowClient

    return {"uri": uri, "folder": folder, "result": result, "client": MlflowClient(tracking_uri=uri)}


def raw_test_images():
    """The first N_TEST MNIST test images as the file stores them: uint8, here given their channel axis."""
    with np.load(Path(os.environ["CNNLAB_DATA_DIR"]) / "mnist.npz") as f:
        return f["x_test"][:N_TEST, ..., None], f["y_test"][:N_TEST]


@pytest.fixture(scope="module")
def pyfunc_model(trained):
    import mlflow.pyfunc

    from cnnlab.record.store import URI_ENV

    os.environ[URI_ENV] = trained["uri"]  # runs:/ URIs resolve against the tracking URI
    try:
        return mlflow.pyfunc.load_model(f"runs:/{trained['result']['run_id']}/model")
    finally:
        del os.environ[URI_ENV]


def test_pyfunc_on_raw_uint8_images_gives_the_logged_test_accuracy(trained, pyfunc_model):
    from cnnlab.record.export import input_spec

    x, y = raw_test_images()
    assert input_spec(pyfunc_model) == ((28, 28, 1), np.dtype("uint8"))
    probabilities = pyfunc_model.predict(x)
    assert probabilities.shape == (N_TEST, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)  # probabilities, not logits
    logged = trained["client"].get_run(trained["result"]["run_id"]).data.metrics["test_accuracy"]
    assert logged > 0.5  # a trained network (chance is 0.1)
    assert abs(float(np.mean(probabilities.argmax(axis=1) == y)) - logged) <= 0.002


def test_the_model_is_a_logged_model_of_the_run_with_its_metrics(trained):
    client, run_id = trained["client"], trained["result"]["run_id"]
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id, str(m.status)) for m in models] == [("model", run_id, "READY")]
    assert [o.model_id for o in run.outputs.model_outputs] == [models[0].model_id]
    linked = {m.key: m.value for m in models[0].metrics}
    assert linked["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert "val_accuracy" in linked
    assert run.data.tags["model.uri"] == f"runs:/{run_id}/model"
    assert "model.keras" not in {a.path for a in client.list_artifacts(run_id)}  # the MLflow model replaced it
    assert run.data.metrics["export_cpu_seconds"] > 0


def test_register_as_creates_a_version_and_tags_the_run(trained):
    client, run_id = trained["client"], trained["result"]["run_id"]
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert [(str(v.version), v.run_id, v.status) for v in versions] == [("1", run_id, "READY")]
    tags = client.get_run(run_id).data.tags
    assert (tags["model.registered_name"], tags["model.registered_version"]) == (REGISTERED, "1")
    client.set_registered_model_alias(REGISTERED, "champion", "1")
    assert client.get_model_version_by_alias(REGISTERED, "champion").run_id == run_id


def test_data_splits_are_dataset_inputs(trained):
    run = trained["client"].get_run(trained["result"]["run_id"])
    found = {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags}) for i in run.inputs.dataset_inputs}
    assert set(found) == {"mnist-train", "mnist-validation", "mnist-test"}
    for name, (dataset, tags) in found.items():
        assert tags["mlflow.data.context"] == name.split("-")[1]
        assert json.loads(dataset.source)["uri"].endswith("mnist.npz") and len(dataset.digest) == 8
    assert json.loads(found["mnist-test"][0].profile)["num_rows"] == N_TEST
    assert len({d.digest for d, _ in found.values()}) == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 30):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_like_pyfunc(trained, pyfunc_model, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{trained['result']['run_id']}/model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": trained["uri"]}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # the server imports TensorFlow and loads the model
        for _ in range(600):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer within 120 s"
                time.sleep(0.5)
        x = raw_test_images()[0][:10]
        answer = post(f"http://127.0.0.1:{port}/invocations", {"inputs": x.tolist()})
        served = np.asarray(answer["predictions"])
        assert served.shape == (10, 10)
        assert served.argmax(axis=1).tolist() == pyfunc_model.predict(x).argmax(axis=1).tolist()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


def test_a_spooled_model_uploads_as_the_runs_logged_model(trained, tmp_path, monkeypatch):
    """A model the helper had to spool (server away) becomes the run's logged model when the spool is replayed."""
    from mlflow.artifacts import download_artifacts

    from cnnlab.record.tracking import Tracker
    from cnnlab.spool import Spool, upload

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])  # runs:/ URIs resolve against it
    local = download_artifacts(f"runs:/{trained['result']['run_id']}/model", dst_path=str(tmp_path / "m"))
    tracker = Tracker.start(trained["uri"], "spooled", "spooled-run")
    spool = Spool.create(tmp_path / "spool", trained["uri"], tracker.run_id, "test")
    spool.call("log_model", (local, "model", 7, None))
    spool.end("FINISHED", None)
    import shutil

    shutil.rmtree(local)  # the run deletes its folder once handed over: the spool keeps its own copy
    assert upload(tmp_path / "spool" / tracker.run_id) == 2
    client = trained["client"]
    models = client.search_logged_models(experiment_ids=[client.get_run(tracker.run_id).info.experiment_id])
    assert [(m.source_run_id, str(m.status)) for m in models] == [(tracker.run_id, "READY")]
    assert client.get_run(tracker.run_id).outputs.model_outputs[0].step == 7


@pytest.mark.parametrize("value, message", [
    ("a/b", "tracking.register_as: 'a/b' may not contain / : @ or quotes"),
    ("''", "tracking.register_as: expected a non-empty string, got ''"),
])
def test_a_bad_register_as_is_one_line_and_exit_2_before_training(tmp_path, value, message):
    out = run_cli(f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.register_as={value}", timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
