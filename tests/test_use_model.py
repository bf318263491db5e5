"""`python -m cnnlab.evaluate` and `python -m cnnlab.predict` on a real logged model (issue 15).

One module fixture trains the tiny CNN on real MNIST for 300 steps and logs it as cnnlab's
model contract says (`cnnlab.export`: raw uint8 images in, probabilities out) in a fresh
SQLite store, registered as `tiny@champion`. The command lines checked here then run as real
subprocesses, all started at once (each spends most of its time importing MLflow or
TensorFlow), while this process evaluates (`cnnlab.evaluate.evaluate`: TensorFlow is loaded
here already) and computes what the commands must print with pyfunc directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

MNIST = Path(os.environ["CNNLAB_DATA_DIR"]) / "mnist.npz"
STEPS = 300
pytestmark = [pytest.mark.skipif(not MNIST.is_file(), reason=f"needs {MNIST}"),
              # the served model names its input "image"; pyfunc hands Keras a bare array, which is right
              pytest.mark.filterwarnings("ignore:The structure of `inputs` doesn't match:UserWarning")]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A cnnlab run (its params as `tracking.flatten(run.resolved)`) that logged its model at runs:/<id>/model.

    Stands in for `python run.py model=tiny dataset=mnist optimizer=adam trainer.steps=300
    tracking.register_as=tiny` until runs log their model themselves; also a run without a model.
    """
    import mlflow
    import mlflow.keras
    from hydra import compose, initialize_config_dir

    from cnnlab import export
    from cnnlab.data import load_data
    from cnnlab.schema import CONF_DIR, check_config
    from cnnlab.store import artifact_location
    from cnnlab.tracking import ensure_experiment, flatten
    from cnnlab.train import prepare_model

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        run = check_config(compose("config", overrides=["model=tiny", "dataset=mnist", "optimizer=adam"]))
    data = load_data(run.dataset)
    model, from_logits, _ = prepare_model(run, STEPS)
    model.fit(data.x_train[: STEPS * 64], data.y_train[: STEPS * 64], batch_size=64, epochs=1, verbose=0)
    served = export.serving_model(model, run.dataset["input_shape"], data.raw_dtype, data.pixel_range, from_logits)

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # log_model and the local registry look the store up globally
    try:
        client = mlflow.MlflowClient(uri)
        experiment = ensure_experiment(client, "cnnlab", artifact_location(uri))
        with mlflow.start_run(experiment_id=experiment, run_name="tiny-he-adam") as active:
            mlflow.log_params(flatten(run.resolved))
            info = mlflow.keras.log_model(served, name="model", signature=export.signature(served),
                                          pip_requirements=export.requirements())
        run_id = active.info.run_id
        client.create_registered_model("tiny")
        version = client.create_model_version("tiny", info.model_uri, run_id=run_id, model_id=info.model_id)
        client.set_registered_model_alias("tiny", "champion", version.version)
        bare = client.create_run(experiment, run_name="no-model")
        client.set_terminated(bare.info.run_id)
        yield {"uri": uri, "client": client, "run_id": run_id, "bare_id": bare.info.run_id, "folder": folder,
               "experiment": experiment, "dataset": run.dataset, "model_id": info.model_id, "pyfunc": mlflow.pyfunc.load_model(f"runs:/{run_id}/model")}
    finally:
        mlflow.set_tracking_uri(None)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture(scope="module")
def images(logged):
    """The first 8 MNIST test images as PNG files; the first also as a 56×56 RGB JPEG; a broken PNG."""
    from PIL import Image

    with np.load(MNIST) as f:
        x, y = f["x_test"][:8], f["y_test"][:8]
    folder = logged["folder"] / "images"
    folder.mkdir()
    paths = []
    for i, (image, label) in enumerate(zip(x, y)):
        paths.append(folder / f"test{i}_label{label}.png")
        Image.fromarray(image).save(paths[-1])
    big = folder / "big.jpg"
    Image.fromarray(x[0]).convert("RGB").resize((56, 56)).save(big)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return {"png": paths, "x": x[..., None], "labels": y.tolist(), "big": big, "broken": folder / "broken.png"}


def command_lines(logged, images) -> dict[str, list[str]]:
    run, tracking = f"runs:/{logged['run_id']}/model", ["--tracking-uri", logged["uri"]]
    evaluate, predict = ["-m", "cnnlab.evaluate"], ["-m", "cnnlab.predict"]
    return {
        "predict": [*predict, run, *map(str, images["png"]), str(images["big"]), "--top-k", "3", *tracking],
        "unknown_run": [*evaluate, "runs:/0123456789abcdef0123456789abcdef/model", *tracking],
        "no_model": [*evaluate, f"runs:/{logged['bare_id']}/model", *tracking],
        "wrong_shape": [*evaluate, run, "--dataset", "cifar10", *tracking],
        "bad_split": [*evaluate, run, "--split", "holdout", *tracking],
        "broken_image": [*predict, run, str(images["png"][0]), str(images["broken"]), *tracking],
    }


class Started:
    """Command lines running side by side; `[name]` waits (bounded) for one and gives its CompletedProcess."""

    def __init__(self, lines: dict[str, list[str]]):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        self.procs = {name: subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                      for name, args in lines.items()}
        self.done = {}

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        if name not in self.done:
            proc = self.procs[name]
            stdout, stderr = proc.communicate(timeout=300)  # bounded: a hung command fails the test
            self.done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        return self.done[name]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()  # by its own handle: only what this module started
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def results(logged, images):
    """Every command line of `command_lines`, started at once; this process checks their output meanwhile."""
    started = Started(command_lines(logged, images))
    try:
        yield started
    finally:
        started.stop()


def test_model_uris_name_the_source_run(logged, results):
    from cnnlab.errors import ConfigError
    from cnnlab.model_ref import resolve, run_dataset

    client, run_id = logged["client"], logged["run_id"]
    for uri in (f"runs:/{run_id}/model", "models:/tiny@champion", "models:/tiny/1", f"models:/{logged['model_id']}"):
        ref = resolve(client, uri)
        assert (ref.run.info.run_id, ref.model_id) == (run_id, logged["model_id"]), uri
        assert (ref.shape, ref.dtype, ref.classes) == ((28, 28, 1), np.dtype("uint8"), 10)
    assert run_dataset(ref) == logged["dataset"]  # the data set config, back from the run's params
    for uri, says in (("models:/tiny@best", "no alias best of model 'tiny'"), ("models:/tiny/7", "no version 7"),
                      ("models:/tiney@champion", "did you mean 'tiny'"), ("runs:/abc", "is not a model URI")):
        with pytest.raises(ConfigError, match=says):
            resolve(client, uri)


def test_evaluate_matches_pyfunc_and_records_a_linked_run(logged, results, capsys):
    with np.load(MNIST) as f:
        x, y = f["x_test"][..., None], f["y_test"]
    probabilities = logged["pyfunc"].predict(x)
    accuracy = float(np.mean(np.argmax(probabilities, axis=-1) == y))
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1))))
    # in this process, where TensorFlow is loaded already (the command line's exits are checked below)
    from cnnlab.evaluate import evaluate

    try:
        evaluate(["models:/tiny@champion", "--tracking-uri", logged["uri"]])  # data set: the version's run's
    finally:
        from cnnlab.backend import keras

        keras.config.enable_interactive_logging()  # as it was for the tests after this one
    line = capsys.readouterr().out.strip()
    assert f"test_accuracy={accuracy:.4f}" in line and f"test_loss={loss:.4f}" in line and "10000 images" in line
    assert accuracy > 0.8  # the model learned: its accuracy is a real one to compare

    client = logged["client"]
    run = client.get_run(line.rsplit("MLflow run ", 1)[1])
    assert run.info.status == "FINISHED" and run.info.experiment_id == logged["experiment"]
    assert run.info.run_name == "evaluate-tiny-he-adam"
    assert run.data.tags["cnnlab.source_run_id"] == logged["run_id"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert run.data.params["dataset.name"] == "mnist" and run.data.params["split"] == "test"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "mnist-test" and json.loads(dataset.dataset.profile)["num_rows"] == 10000
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json"} <= artifacts
    matrix = np.array(json.loads(Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json",
                                                                  str(logged["folder"]))).read_text())["matrix"])
    assert matrix.sum() == 10000 and np.trace(matrix) == round(accuracy * 10000)
    # MLflow 3: the evaluation's metrics belong to the logged model too
    linked = [m for m in client.get_logged_model(logged["model_id"]).metrics if m.run_id == run.info.run_id]
    assert {m.key for m in linked} == {"test_accuracy", "test_loss"}


def test_predict_prints_the_true_classes(logged, images, results):
    from PIL import Image

    from cnnlab.predict import to_array

    expected = np.argmax(logged["pyfunc"].predict(images["x"]), axis=-1).tolist()
    big = to_array(Image.open(images["big"]), (28, 28, 1), np.dtype("uint8"))  # as the command converts it
    expected_big = int(np.argmax(logged["pyfunc"].predict(big[None])))
    done = results["predict"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(images["png"]) + 1
    printed = []
    for line, path in zip(lines, images["png"]):
        name, top = line.split(": ")
        classes = [int(c.split(" (")[0]) for c in top.split("  ")]
        assert name == str(path) and len(classes) == 3, line
        printed.append(classes[0])
    assert printed == expected  # what pyfunc says for the same raw images
    assert sum(p == t for p, t in zip(printed, images["labels"])) >= 7  # a model that predicts well: the truth
    assert lines[-1].startswith(f"{images['big']}: {expected_big} (")


@pytest.mark.parametrize("name, says", [
    ("unknown_run", "MODEL_URI: no run 0123456789abcdef0123456789abcdef"),
    ("no_model", "has no model at 'model'"),
    ("wrong_shape", "--dataset: cifar10 images are [32, 32, 3] but runs:/"),
    ("bad_split", "argument --split: invalid choice: 'holdout'"),
    ("broken_image", "broken.png' is not a readable image"),
])
def test_bad_input_is_one_line_and_exit_2(results, name, says):
    done = results[name]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: "), done.stderr
    assert says in done.stderr
    assert done.stdout == ""  # nothing predicted, nothing half-done


def test_failed_evaluations_leave_no_run(logged, images, results):
    for name in command_lines(logged, images):
        results[name]  # all of them have ended
    runs = logged["client"].search_runs([logged["experiment"]])
    evaluations = [r for r in runs if r.info.run_name.startswith("evaluate-")]
    assert len(evaluations) == 1 and evaluations[0].info.status == "FINISHED"


def test_an_evaluation_that_cannot_be_recorded_ends_failed(logged, capsys):
    """The artifact folder turns read-only (a read-only bind mount): the run ends FAILED, saying why; exit 4."""
    from cnnlab.evaluate import evaluate

    artifacts = logged["folder"] / "artifacts"
    mounted = False
    try:
        for args in (["--bind", str(artifacts), str(artifacts)], ["-o", "remount,bind,ro", str(artifacts)]):
            if subprocess.run(["mount", *args], capture_output=True).returncode:
                pytest.skip("cannot bind-mount here (not root?)")
            mounted = True
        with pytest.raises(SystemExit) as exited:
            evaluate([f"runs:/{logged['run_id']}/model", "--split", "val", "--tracking-uri", logged["uri"]])
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(artifacts)], capture_output=True)
        from cnnlab.backend import keras

        keras.config.enable_interactive_logging()
    assert exited.value.code == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot record the evaluation") and "Read-only file system" in err
    (failed,) = [r for r in logged["client"].search_runs([logged["experiment"]]) if r.info.status != "FINISHED"]
    assert failed.info.run_name == "evaluate-tiny-he-adam" and failed.info.status == "FAILED"
    assert "Read-only file system" in failed.data.tags["error"]
