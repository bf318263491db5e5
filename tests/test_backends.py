"""The same configs on Keras's JAX and PyTorch backends (GPU hosts may have JAX or PyTorch but no TensorFlow)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import run_cli


@pytest.mark.parametrize("backend,pipeline", [
    ("jax", "tensors"),  # the split as JAX arrays, batches gathered on the device
    ("torch", "tensors"),
])
def test_run_on_another_backend(tmp_path, backend, pipeline):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[dev]' installs it)")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = run_cli("model=tiny", "dataset=synthetic", "optimizer=adam", "optimizer.lr=0.01", "trainer.steps=20",
                "trainer.eval_every=10", "trainer.verbose=0",
                f"trainer.pipeline={pipeline}", f"tracking.uri={uri}", env={"KERAS_BACKEND": backend})
    assert p.returncode == 0, p.stderr[-3000:]
    # Keras seeds tf.data on every backend, importing TensorFlow: its start-up lines stay held back here too
    assert "InitializeLog" not in p.stderr and "cudart" not in p.stderr, p.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["keras.backend"] == backend
    assert run.data.tags[f"versions.{backend}"]
    assert run.data.metrics["test_accuracy"] > 0.9  # the synthetic classes are easy; chance is 0.1
    assert "init.act_std.conv1" in run.data.metrics  # diagnostics work off TensorFlow too
