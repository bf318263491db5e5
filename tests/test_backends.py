"""The same configs on Keras's JAX backend (GPU hosts may have JAX but no TensorFlow)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import run_cli


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_run_on_jax_backend(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # trainer.pipeline=tensors: the split as JAX arrays, batches gathered on the device
    p = run_cli("model=tiny", "dataset=synthetic", "optimizer=adam", "optimizer.lr=0.01", "trainer.steps=20",
                "trainer.eval_every=10", "trainer.verbose=0",
                "trainer.pipeline=tensors", f"tracking.uri={uri}", env={"KERAS_BACKEND": "jax"})
    assert p.returncode == 0, p.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["keras.backend"] == "jax"
    assert run.data.tags["versions.jax"]
    assert run.data.metrics["test_accuracy"] > 0.9  # the synthetic classes are easy; chance is 0.1
    assert "init.act_std.conv1" in run.data.metrics  # diagnostics work off TensorFlow too
