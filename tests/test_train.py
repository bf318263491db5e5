"""One run end to end: real Keras training, a real SQLite MLflow store, real Hydra composition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

from cnnlab.errors import DataError, Diverged
from cnnlab.run.train import train
from cnnlab.schema import check_config

FAST = ["model=tiny", "dataset=synthetic", "optimizer=adam", "optimizer.lr=0.01", "trainer.steps=40",
        "trainer.eval_every=20", "trainer.verbose=0"]


# N(0,1) weights with SGD at 0.1 blow up within a few steps (the LTFN problem at a high lr)
DIVERGES = ["model=ltfn5", "dataset=synthetic", "dataset.train_size=600", "dataset.test_size=100", "init=normal",
            "optimizer.lr=0.1", "trainer.steps=40", "trainer.verbose=0"]


def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def test_run_is_fully_recorded(compose, tmp_path):
    uri = store(tmp_path)
    run = check_config(compose(*FAST, f"tracking.uri={uri}"))
    result = train(run, overrides=["model=tiny"], choices={"init": "he"})
    assert result["test_accuracy"] > 0.5  # the synthetic classes are easy; chance is 0.1

    client, found = runs(uri)
    assert len(found) == 1
    r = found[0]
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "tiny-he-adam"
    assert r.data.params["model.layers.conv1.filters"] == "8"
    assert r.data.params["optimizer.lr"] == "0.01"
    for tag in ("hydra.overrides", "git.commit", "git.dirty", "versions.keras", "versions.mlflow",
                "keras.backend", "device"):
        assert tag in r.data.tags, tag
    assert r.data.tags["hydra.overrides"] == "model=tiny"
    assert r.data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    history = client.get_metric_history(r.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [20, 40]
    assert len(client.get_metric_history(r.info.run_id, "val_loss")) == 2
    for name in ("train_loss", "train_accuracy"):  # trainer.log_every=10
        assert [m.step for m in client.get_metric_history(r.info.run_id, name)] == [10, 20, 30, 40]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "shape_table.txt", "learning_curve.png", "confusion_matrix.png"} <= artifacts
    # artifacts live beside the SQLite file, not in the working directory
    assert (tmp_path / "artifacts").is_dir()


def test_logged_model_reloads_and_predicts_like_the_run(compose, tmp_path, monkeypatch):
    """The logged model takes the data set's raw pixels (uint8) and classifies them as the run's evaluation did."""
    import mlflow.pyfunc
    import numpy as np

    from cnnlab.data.datasets import load_data, synthetic_arrays

    uri = store(tmp_path)
    run = check_config(compose(*FAST, f"tracking.uri={uri}"))
    result = train(run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # runs:/ URIs resolve against it
    model = mlflow.pyfunc.load_model(f"runs:/{result['run_id']}/model")
    data = load_data(run.dataset)
    raw_test = synthetic_arrays(run.dataset)[2][: len(data.y_test)]
    assert raw_test.dtype == np.uint8
    accuracy = (model.predict(raw_test).argmax(-1) == data.y_test).mean()
    assert accuracy == pytest.approx(result["test_accuracy"])


def test_log_every_windows_average_to_each_evaluations_train_means(compose):
    """`trainer.log_every`: means over k steps, exact (the evaluation's train means are over its whole chunk)."""
    import numpy as np

    from cnnlab.data.datasets import load_data
    from cnnlab.run.fit import fit
    from cnnlab.run.train import prepare_model

    run = check_config(compose(*FAST, "tracking=none", "trainer.log_every=5"))
    model, _, _ = prepare_model(run, 40)
    evals, logs = [], []
    fit(model, load_data(run.dataset), run.trainer, on_eval=lambda s, m: evals.append((s, m)),
        on_log=lambda s, m: logs.append((s, m)))
    assert [s for s, _ in logs] == [5, 10, 15, 20, 25, 30, 35, 40] and [s for s, _ in evals] == [20, 40]
    for step, chunk in evals:
        for name in ("train_loss", "train_accuracy"):
            windows = [m[name] for s, m in logs if step - 20 < s <= step]
            assert np.mean(windows) == pytest.approx(chunk[name], rel=1e-5, abs=1e-6)


def test_tracking_none_writes_no_store(compose, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = check_config(compose(*FAST, "tracking=none"))
    result = train(run)
    assert result["run_id"] is None and 0 <= result["test_accuracy"] <= 1
    assert not any(tmp_path.iterdir())


def test_divergence_marks_run_failed(compose, tmp_path):
    uri = store(tmp_path)
    run = check_config(compose(*DIVERGES, f"tracking.uri={uri}", "trainer.checkpoint_every=1"))
    with pytest.raises(Diverged) as info:
        train(run)
    client, found = runs(uri)
    assert len(found) == 1 and found[0].info.status == "FAILED"
    assert found[0].data.tags["diverged"] == "true"
    assert client.search_logged_models(experiment_ids=[found[0].info.experiment_id]) == []  # no model to use
    assert int(found[0].data.tags["diverged_at_step"]) == info.value.step <= 40
    assert not list(tmp_path.glob("**/latest.json"))  # no checkpoint kept: resuming would diverge again


def test_same_seed_same_result(compose):
    a = train(check_config(compose(*FAST, "tracking=none", "trainer.deterministic=true")))
    b = train(check_config(compose(*FAST, "tracking=none", "trainer.deterministic=true")))
    assert a["test_loss"] == b["test_loss"]
    # the other pipeline (the default on TensorFlow is tf.data's, `tensors`) feeds the very same batches:
    # with op determinism, the very same run
    c = train(check_config(compose(*FAST, "tracking=none", "trainer.deterministic=true", "trainer.pipeline=pydataset")))
    assert c["test_loss"] == a["test_loss"]


@pytest.mark.parametrize("fast_path", ["trainer.jit_compile=true", "trainer.steps_per_execution=5",
                                       "trainer.mixed_precision=mixed_bfloat16", "trainer.pipeline=pydataset"])
def test_fast_paths_train(compose, fast_path):
    result = train(check_config(compose(*FAST, "tracking=none", fast_path)))
    assert result["test_accuracy"] > 0.9  # chance is 0.1
    assert result["steps"] == 40
    # steps 2..N (or after the first execution), not one per callback: 40 steps of 100 images
    assert result["images_per_second"] > 100


def test_mixed_precision_auto_uses_bfloat16_only_where_native(compose, tmp_path):
    """`auto` picks mixed_bfloat16 on a CPU with AMX/AVX512-BF16 (emulated bf16 elsewhere is far slower).

    Also: `tracking.log_model=false` logs no model, but still the data sets.
    """
    import tensorflow as tf

    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    expected = "mixed_bfloat16" if {"amx_bf16", "avx512_bf16"} & set(flags) else "float32"
    uri = store(tmp_path)
    result = train(check_config(compose(*FAST, f"tracking.uri={uri}", "tracking.log_model=false",
                                        "trainer.mixed_precision=auto")))
    client, (run,) = runs(uri)
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id]) == []
    assert "export_cpu_seconds" not in run.data.metrics and "model.uri" not in run.data.tags
    assert {i.dataset.source_type for i in run.inputs.dataset_inputs} == {"code"}  # synthetic: made by code
    assert run.data.params["trainer.mixed_precision"] == "auto"
    assert result["test_accuracy"] > 0.9
    if not tf.config.list_physical_devices("GPU"):  # the CPU rule; a GPU decides by its compute capability
        assert run.data.tags["dtype_policy"] == expected


def test_missing_data_file_creates_no_run(compose, tmp_path):
    uri = store(tmp_path)
    run = check_config(compose("dataset.path=/nonexistent/mnist.npz", f"tracking.uri={uri}"))
    with pytest.raises(DataError, match="dataset.path: mnist data file not found at /nonexistent/mnist.npz"):
        train(run)
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_missing_data_dir_one_line_exit_2(tmp_path):
    uri = store(tmp_path)
    p = run_cli("model=tiny", "trainer.steps=5", f"tracking.uri={uri}", env={"CNNLAB_DATA_DIR": str(tmp_path)})
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CNNLAB_DATA_DIR" in errors[0] and str(tmp_path / "mnist.npz") in errors[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_corrupt_data_file(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip file")
    p = run_cli("model=tiny", "trainer.steps=5", "tracking=none", env={"CNNLAB_DATA_DIR": str(tmp_path)})
    assert p.returncode == 2 and "is not a readable .npz file" in p.stderr and "Traceback" not in p.stderr


def test_cli_divergence_one_line_exit_3(tmp_path):
    uri = store(tmp_path)
    p = run_cli(*DIVERGES, f"tracking.uri={uri}")
    assert p.returncode == 3, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0]
    assert "Traceback" not in p.stderr
    _, found = runs(uri)
    assert [r.info.status for r in found] == ["FAILED"]


def start_long_run(uri: str) -> subprocess.Popen:
    """`run.py` on a budget it will not finish, returned once its run is recording validation metrics."""
    runs(uri)  # create the store first: polling a store whose schema another process is creating races on it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "run.py", "model=tiny", "dataset=synthetic", "trainer.steps=100000", "trainer.eval_every=5",
         "trainer.verbose=0",
         f"tracking.uri={uri}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group, as a command started from a terminal
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the run exists and training has started
        time.sleep(1)
        _, found = runs(uri)
        if found and found[0].data.metrics.get("val_loss") is not None:
            break
    return proc


def test_ctrl_c_ends_run_killed(tmp_path):
    uri = store(tmp_path)
    proc = start_long_run(uri)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: to the whole process group
        _, stderr = proc.communicate(timeout=120)  # stops after the current step, not at the end of the budget
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    _, found = runs(uri)
    assert [r.info.status for r in found] == ["KILLED"]
    run_id, step = found[0].info.run_id, stderr.split(" is KILLED at step ")[-1].split(";")[0]
    # the one line names the run, where it stopped and the command that continues it (the args as typed)
    assert stderr.strip().splitlines()[-1] == (
        f"error: interrupted (SIGINT); MLflow run {run_id} is KILLED at step {step}; continue it with: "
        f"python run.py {' '.join(proc.args[2:])} resume={run_id}")
    assert int(step) >= 5


def test_hard_killed_training_process_leaves_no_running_run(tmp_path):
    """A run is one process. SIGKILL gives it no chance to end its run: the next command that opens the store
    does (cnnlab.record.liveness), here the next run, and a run of another, live process is left alone."""
    from cnnlab.record.tracking import Tracker

    uri = store(tmp_path)
    proc = start_long_run(uri)
    # a run is one process: no helper beside it while it trains (`ps` shows one)
    assert subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split() == []
    other = Tracker.start(uri, "cnnlab", "alive")  # this test's own process: alive, so left RUNNING
    proc.kill()
    proc.communicate(timeout=60)
    (killed,) = [r for r in runs(uri)[1] if r.info.run_name != "alive"]
    assert killed.info.status == "RUNNING"  # nobody could end it yet
    assert killed.data.tags["process.pid"] == str(proc.pid) and killed.data.tags["process.started"]
    Tracker.start(uri, "cnnlab", "next")  # the next run opens the store
    by_name = {r.info.run_name: r for r in runs(uri)[1]}
    assert by_name[killed.info.run_name].info.status == "KILLED"
    assert by_name[killed.info.run_name].data.tags["error"] == \
        f"its process {proc.pid} on {killed.data.tags['host']} ended without ending the run (killed)"
    assert by_name["alive"].info.status == "RUNNING" and by_name["next"].info.status == "RUNNING"
    other.end("FINISHED")


def test_tracking_worker_reports_a_failed_call_and_fails_the_run(tmp_path):
    from cnnlab.record.recorder import Recorder, TrackingError

    uri = store(tmp_path)
    recorder = Recorder()
    recorder.start(uri, "cnnlab", "broken-metric")
    recorder.log_eval(1, {"val_accuracy": 0.5})
    recorder.log_eval(2, {"val_accuracy": "not a number"})  # fails on the recorder's thread
    recorder.log_eval(3, {"val_accuracy": 0.6})  # skipped: the record is already broken
    with pytest.raises(TrackingError, match="^TypeError: must be real number"):
        recorder.end("FINISHED")
    assert recorder.waited > 0 and recorder.run_id
    _, (run,) = runs(uri)
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"val_accuracy": 0.5}


@pytest.mark.slow
def test_real_mnist_small_budget(compose):
    """Real MNIST, a small model, 150 steps: learns well past chance."""
    run = check_config(compose("model=tiny", "optimizer=adam", "optimizer.lr=0.01", "trainer.steps=150",
                               "trainer.eval_every=50", "dataset.test_size=2000", "tracking=none",
                               "trainer.verbose=0"))
    assert run.dataset.name == "mnist" and run.dataset.val_size == 5000 and run.dataset.train_size is None
    result = train(run)
    assert result["test_accuracy"] > 0.7


def test_cli_unusable_tracking_store_one_line_exit_2():
    p = run_cli("model=tiny", "dataset=synthetic", "trainer.steps=5", "tracking.uri=sqlite:////proc/cnnlab/mlflow.db")
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: tracking.uri: cannot record to MLflow")
    assert "Traceback" not in p.stderr
