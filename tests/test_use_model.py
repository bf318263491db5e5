"""`python -m cnnlab.evaluate` and `python -m cnnlab.predict` on a real logged model (issue 15).

One module fixture runs `python run.py model=tiny dataset=mnist ... tracking.register_as=tiny`
(150 steps, real MNIST, a fresh SQLite store): the run logs its model and registers it, and the
alias `champion` is then pointed at its version as README's snippet does. The commands' bad
inputs run as real subprocesses, all started at once (each spends most of its time importing
MLflow), while this process, where TensorFlow is loaded once, evaluates and predicts
(`cnnlab.evaluate.evaluate`, `cnnlab.predict.predict`) and checks them against pyfunc directly.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

MNIST = Path(os.environ["CNNLAB_DATA_DIR"]) / "mnist.npz"
# ~0.93 test accuracy (2 CPU cores: ~4 s of training in ~18 s of run): what the 8 PNG digits below need;
# train_size/val_size only cut loading and validating (the test split stays all 10,000)
TRAIN = ["model=tiny", "dataset=mnist", "optimizer=adam", "optimizer.lr=0.003", "trainer.steps=150",
         "trainer.batch_size=128", "trainer.eval_every=150", "trainer.steps_per_execution=10", "trainer.verbose=0",
         "dataset.train_size=20200", "dataset.val_size=1000", "tracking.register_as=tiny"]
pytestmark = pytest.mark.skipif(not MNIST.is_file(), reason=f"needs {MNIST}")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The run `python run.py *TRAIN` made (model at runs:/<id>/model, `tiny@champion`); also a run without a model."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    done = {}
    # the run imports TensorFlow in its own process; this one imports it (for pyfunc, evaluate) meanwhile
    training = threading.Thread(target=lambda: done.setdefault("run", run_cli(
        *TRAIN, f"tracking.uri={uri}", f"hydra.run.dir={folder}/hydra", timeout=300)))
    training.start()
    try:
        import mlflow
        import mlflow.pyfunc
        from hydra import compose, initialize_config_dir

        importlib.import_module("cnnlab.backend")  # TensorFlow, while the run trains
        from cnnlab.schema import CONF_DIR, check_config

        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            dataset = check_config(compose("config", overrides=TRAIN)).dataset  # what the run's params must give
    finally:
        training.join(timeout=320)  # run_cli's own timeout ends it first
    result = done["run"]
    assert result.returncode == 0, result.stderr[-3000:]

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # the local registry and runs:/ URIs resolve through the global URI
    try:
        client = mlflow.MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
        run_id = run.info.run_id
        assert run.data.tags["model.uri"] == f"runs:/{run_id}/model"
        # README's snippet: the alias champion on the version with the best validation accuracy
        versions = client.search_model_versions("name = 'tiny'")
        best = max(versions, key=lambda v: client.get_run(v.run_id).data.metrics.get("val_accuracy", -1))
        client.set_registered_model_alias("tiny", "champion", best.version)
        assert (best.run_id, str(best.version)) == (run_id, run.data.tags["model.registered_version"])
        bare = client.create_run(run.info.experiment_id, run_name="no-model")
        client.set_terminated(bare.info.run_id)
        yield {"uri": uri, "client": client, "run_id": run_id, "bare_id": bare.info.run_id, "folder": folder,
               "experiment": run.info.experiment_id, "dataset": dataset, "model_id": run.data.tags["model.id"],
               "pyfunc": mlflow.pyfunc.load_model(f"runs:/{run_id}/model")}
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
    from cnnlab.record.model_ref import resolve, run_dataset

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
    # the run's own test accuracy (Keras on the scaled split) is the served model's on the raw one
    assert accuracy == pytest.approx(logged["client"].get_run(logged["run_id"]).data.metrics["test_accuracy"],
                                     abs=2e-4)

    client = logged["client"]
    run = client.get_run(line.rsplit("MLflow run ", 1)[1])
    assert run.info.status == "FINISHED" and run.info.experiment_id == logged["experiment"]
    assert run.info.run_name == "evaluate-tiny-he-adam"
    assert run.data.tags["cnnlab.source_run_id"] == logged["run_id"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert run.data.params["dataset.name"] == "mnist" and run.data.params["split"] == "test"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "mnist-test" and json.loads(dataset.dataset.profile)["num_rows"] == 10000
    trained_on = {d.dataset.name: d.dataset.digest for d in client.get_run(logged["run_id"]).inputs.dataset_inputs}
    assert dataset.dataset.digest == trained_on["mnist-test"] != trained_on["mnist-validation"]  # the same split
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json"} <= artifacts
    matrix = np.array(json.loads(Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json",
                                                                  str(logged["folder"]))).read_text())["matrix"])
    assert matrix.sum() == 10000 and np.trace(matrix) == round(accuracy * 10000)
    # MLflow 3: the evaluation's metrics belong to the logged model too
    linked = [m for m in client.get_logged_model(logged["model_id"]).metrics if m.run_id == run.info.run_id]
    assert {m.key for m in linked} == {"test_accuracy", "test_loss"}


def test_predict_prints_the_true_classes(logged, images, results, capsys):
    from PIL import Image

    from cnnlab.predict import predict, to_array

    expected = np.argmax(logged["pyfunc"].predict(images["x"]), axis=-1).tolist()
    big = to_array(Image.open(images["big"]), (28, 28, 1), np.dtype("uint8"))  # as the command converts it
    expected_big = int(np.argmax(logged["pyfunc"].predict(big[None])))
    # in this process, where TensorFlow is loaded already (a third TensorFlow import would cost ~10 s of CPU);
    # `python -m cnnlab.predict` itself runs below (broken_image)
    capsys.readouterr()  # not the progress bars of the pyfunc calls above
    try:
        predict([f"runs:/{logged['run_id']}/model", *map(str, images["png"]), str(images["big"]), "--top-k", "3",
                 "--tracking-uri", logged["uri"]])
    finally:
        from cnnlab.backend import keras

        keras.config.enable_interactive_logging()
    lines = capsys.readouterr().out.strip().splitlines()
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
