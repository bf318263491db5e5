"""`trainer.devices`: data-parallel runs on CPU devices simulated with CNNLAB_CPU_DEVICES=2.

The device count is fixed when the backend starts, so the 2-device checks run in one child
process per backend (this file run as a script): a 1-device and a 2-device run of the same
seed and global batch, then a 2-device run interrupted after its first evaluation and resumed
(the logged model, exported from a single-device copy on every backend, is loaded on TensorFlow).
The requests this machine cannot run are checked in-process (pytest's own backend has 1 device).

Agreement: a 2-device step computes the same global-batch mean gradient as a 1-device step, only
summed in another order (per-device partial sums, then an all-reduce), so float32 rounding
differs by ~1e-7 relative per step; over 40 Adam steps the test loss moved by ~1e-7 relative
(TF and JAX, measured). The test allows 1e-4 relative: rounding, far below any real difference
(a wrong batch split or a per-device mean would change the loss at the 1e-2 level).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model=tiny", "dataset=synthetic", "optimizer=adam", "trainer.steps=40", "trainer.eval_every=20",
             "trainer.verbose=0", "trainer.deterministic=true"]
TOLERANCE = 1e-4  # relative, on the test loss (see above)


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*OVERRIDES, *overrides])


def _config(*overrides: str):
    from cnnlab.schema import check_config

    return check_config(_compose(*overrides))


def _child(folder: str) -> dict:
    """In a process started with CNNLAB_CPU_DEVICES=2: the numbers the test checks."""
    import signal

    from mlflow.tracking import MlflowClient

    from cnnlab.errors import Interrupted
    from cnnlab.run import fit
    from cnnlab.run.train import train

    store = f"tracking.uri=sqlite:///{folder}/mlflow.db"
    one = train(_config("trainer.devices=1", "tracking.enabled=false"))
    export = os.environ.get("KERAS_BACKEND") == "tensorflow"  # (the export path is the same on every backend)
    two = train(_config("trainer.devices=2", store, f"tracking.log_model={str(export).lower()}"))
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    tags = client.get_run(two["run_id"]).data.tags

    original = fit.Monitor.on_epoch_end

    def stop_after_first_evaluation(self, epoch, logs=None):  # Ctrl-C at step 20, as a user would press it
        original(self, epoch, logs)
        fit.Monitor.on_epoch_end = original
        os.kill(os.getpid(), signal.SIGINT)

    fit.Monitor.on_epoch_end = stop_after_first_evaluation
    try:
        train(_config("trainer.devices=2", store, "tracking.log_model=false"))
        raise AssertionError("the run was not interrupted")
    except Interrupted as e:
        killed = e.run_id
    resumed = train(_config("trainer.devices=2", store, "tracking.log_model=false", f"resume={killed}"))
    resumed_tags = client.get_run(killed).data.tags
    served_devices = None
    if export:
        import mlflow.keras

        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        served = mlflow.keras.load_model(f"runs:/{two['run_id']}/model")
        served_devices = sorted({str(d) for w in served.weights for d in _devices(w)})
    return {"one": one["test_loss"], "two": two["test_loss"], "tags": tags,
            "resumed": resumed["test_loss"], "resumed_id": resumed["run_id"], "killed": killed,
            "resumed_from": resumed_tags.get("resumed_from_step"),
            "served_devices": served_devices}


def _devices(variable) -> list:
    value = variable.value
    return list(value.devices()) if hasattr(value, "devices") else [getattr(value, "device", "")]


BACKENDS = [b for b in ("tensorflow", "jax") if importlib.util.find_spec(b) is not None]


@pytest.fixture(scope="module")
def children(tmp_path_factory) -> dict:
    """Both backends' child processes, started together (on 2 cores they run side by side)."""
    started = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "CNNLAB_CPU_DEVICES": "2", "PYTHONPATH": str(REPO / "src")}
        started[backend] = subprocess.Popen([sys.executable, __file__, str(tmp_path_factory.mktemp(backend))],
                                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_agree_with_one_and_resume_exactly(children, backend):
    if backend not in children:
        pytest.skip(f"{backend} is not installed")
    stdout, stderr = children[backend].communicate(timeout=300)
    assert children[backend].returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert abs(out["two"] - out["one"]) <= TOLERANCE * out["one"], out
    assert out["tags"]["devices"] == "2" and out["tags"]["devices.names"] == "CPU:0,CPU:1", out["tags"]
    assert out["resumed_id"] == out["killed"] and out["resumed_from"] == "20"
    assert out["resumed"] == out["two"], out  # resume on 2 devices is exact
    if backend == "tensorflow":
        assert len(out["served_devices"]) == 1, out  # the logged model is a plain single-device one


def test_requests_this_machine_cannot_run_are_one_line_before_training():
    from cnnlab.errors import ConfigError
    from cnnlab.run.devices import plan

    for value, message in ((0, "0 is not one of auto | 1 | a number of devices"),
                           ("two", "'two' is not one of auto | 1 | a number of devices")):
        with pytest.raises(ConfigError) as e:
            _config(f"trainer.devices={value}")
        assert e.value.path == "trainer.devices" and message in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:  # known from the config alone
        _config("trainer.devices=3")
    assert e.value.path == "trainer.batch_size" and "100 does not divide over trainer.devices=3" in str(e.value)
    with pytest.raises(ConfigError) as e:  # pytest's backend has one CPU device
        plan(_config("trainer.devices=2").trainer)
    assert e.value.path == "trainer.devices" and "CNNLAB_CPU_DEVICES" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    auto = plan(_config("trainer.devices=auto").trainer)  # no accelerator: the default device
    assert (auto.count, auto.parallel, auto.per_device_batch) == (1, False, 100)


def test_cli_refuses_more_devices_than_exist_with_exit_2(capsys):
    from cnnlab.run.job import _run_job

    with pytest.raises(SystemExit) as e:
        _run_job(_compose("trainer.devices=2", "tracking.enabled=false"), [], {}, False, None)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: trainer.devices: 2 but this machine's"), err


def test_dry_run_prints_the_device_plan(capsys):
    from cnnlab.run.job import _run_job

    _run_job(_compose("dry_run=true"), [], {}, False, None)
    assert "Devices: 1 (the backend's default device), batch 100" in capsys.readouterr().out


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
