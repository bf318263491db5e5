"""A run's model and data sets as MLflow 3 records: a LoggedModel at `runs:/<id>/model`, dataset inputs.

Split in two. The training loop's side, which holds the Keras
model, saves it as an MLflow model folder (`cnnlab.record.export.save`) and describes its data
splits as plain dicts (`dataset_inputs`: cheap digests, no MLflow import). The recorder's
thread (`cnnlab.record.recorder`, through `Tracker.log_model` / `Tracker.log_datasets`)
turns them into MLflow records with MLflow's own client calls, the same ones
`mlflow.keras.log_model` makes (`mlflow.models.Model.log`): create the LoggedModel, name
it as the run's output, link the run's metrics at the model's step, upload the folder,
mark it READY, and optionally register it. So `mlflow.pyfunc.load_model("runs:/<id>/model")`,
`mlflow models serve -m runs:/<id>/model` and the UI's "Logged models" and "Dataset" columns
work as for any MLflow run.

Example:
    >>> import numpy as np
    >>> from cnnlab.data.datasets import Data
    >>> z = np.zeros((4, 2, 2, 1), np.float32); y = np.arange(4)
    >>> [(d["name"], d["context"], d["rows"]) for d in dataset_inputs(Data(z, y, z[:0], y[:0], z, y, "x.npz"), "demo")]
    [('demo-train', 'train', 4), ('demo-test', 'test', 4)]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SAMPLE = 512  # images hashed per split: enough to tell data sets apart, cheap for the training process


def digest(x: np.ndarray, y: np.ndarray) -> str:
    """8 hex digits over the split's shape, dtype, all labels and up to SAMPLE evenly spaced images.

    The one digest of a split in cnnlab (training runs' and evaluations' dataset inputs).

    >>> digest(np.zeros((3, 2)), np.arange(3)) == digest(np.zeros((3, 2)), np.arange(3))
    True
    >>> digest(np.zeros((3, 2)), np.arange(3)) == digest(np.zeros((3, 2)), np.array([0, 1, 1]))
    False
    """
    h = hashlib.sha256(f"{x.shape}{x.dtype}{y.shape}{y.dtype}".encode())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(x[:: max(1, len(x) // SAMPLE)]).tobytes())
    return h.hexdigest()[:8]


def split_input(name: str, context: str, x: np.ndarray, y: np.ndarray, source: str, raw_dtype: str) -> dict:
    """One split as a plain dict for `dataset_input`; `x` as training sees it (scaled: `cnnlab.data.datasets`).

    Training runs (`dataset_inputs`) and evaluations (`cnnlab.evaluate`) both describe a split
    with it, so the same split has the same digest in both.

    >>> d = split_input("demo-test", "test", np.zeros((4, 2, 2, 1), np.float32), np.arange(4), "x.npz", "uint8")
    >>> d["rows"], d["shape"], d["dtype"], len(d["digest"])
    (4, [2, 2, 1], 'uint8', 8)
    """
    return {"name": name, "context": context, "digest": digest(x, y), "source": source,
            "rows": len(x), "shape": list(x.shape[1:]), "dtype": raw_dtype}


def dataset_inputs(data, name: str) -> list[dict]:
    """The non-empty splits of `data` (a `cnnlab.data.datasets.Data`) as plain dicts for `log_datasets`."""
    splits = (("train", data.x_train, data.y_train), ("validation", data.x_val, data.y_val),
              ("test", data.x_test, data.y_test))
    return [split_input(f"{name}-{context}", context, x, y, data.source, data.raw_dtype)
            for context, x, y in splits if len(x)]


def dataset_input(d: dict):
    """A `split_input` dict as an MLflow DatasetInput, tagged with its context (train/validation/test)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    kind = "code" if d["source"] == "synthetic" or d["source"].startswith("keras.datasets.") else "local"
    return DatasetInput(Dataset(d["name"], d["digest"], kind, json.dumps({"uri": d["source"]}),
                                profile=json.dumps({"num_rows": d["rows"], "image_shape": d["shape"],
                                                    "raw_dtype": d["dtype"]})),
                        tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])])


def log_datasets(client, run_id: str, inputs: list[dict]) -> None:
    """Log `dataset_inputs(...)` on the run."""
    log_inputs(client, run_id, [dataset_input(d) for d in inputs])


def log_inputs(client, run_id: str, datasets: list, models: list | None = None, attempts: int = 3) -> None:
    """`client.log_inputs`, tried again when a parallel run created the same data set row first.

    MLflow's store looks a data set up by (experiment, name, digest) and inserts it when missing,
    with nothing between the two: parallel sweep jobs on one data set can both insert, and the
    second fails on the table's unique key. Its transaction is rolled back whole, so the next try
    finds the row the first one made and only links it to this run.
    """
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            return client.log_inputs(run_id, datasets=datasets, models=models)
        except MlflowException as e:
            if attempt == attempts or not lost_dataset_race(e):
                raise
            time.sleep(0.2 * attempt)


def lost_dataset_race(error: Exception) -> bool:
    """Whether `error` is a data set row that another run inserted first (SQLite's or PostgreSQL's words).

    >>> lost_dataset_race(Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
    ...                             "datasets.name, datasets.digest"))
    True
    >>> lost_dataset_race(Exception('duplicate key value violates unique constraint "dataset_pk"'))
    True
    >>> lost_dataset_race(Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: runs.run_uuid"))
    False
    """
    text = str(error)
    return "UNIQUE constraint failed: datasets." in text or ("duplicate key" in text and "dataset" in text)


def log_model(client, run_id: str, folder: Path, name: str, step: int, register_as: str | None) -> str:
    """Make the MLflow model in `folder` the run's logged model `name`; its model id.

    Safe to call again after a failure part way (the helper retries during an outage, a spool
    replays it): an unfinished model of this run and name is reused, not duplicated.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, RunTag
    from mlflow.models import Model

    run = client.get_run(run_id)
    model = unfinished(client, run, name) or client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, params=dict(run.data.params), model_type="keras")
    outputs = run.outputs.model_outputs if run.outputs else []
    if model.model_id not in {o.model_id for o in outputs}:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    # the run's metrics at the model's step (test accuracy, last validation) also become the model's
    linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=run_id)
              for key in run.data.metrics for m in client.get_metric_history(run_id, key) if m.step == step]
    if linked:
        client.log_batch(run_id, metrics=linked)
    # the folder was saved before the model existed: name it in MLmodel, as Model.log does
    mlmodel = Model.load(str(folder / "MLmodel"))
    mlmodel.run_id, mlmodel.artifact_path = run_id, model.artifact_location
    mlmodel.model_uuid = mlmodel.model_id = model.model_id
    mlmodel.save(str(folder / "MLmodel"))
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    # a failure before this leaves the model PENDING, and a retry (outage, spool) reuses it
    tags = {"model.uri": f"runs:/{run_id}/{name}", "model.id": model.model_id}
    if register_as:
        version = register(client, register_as, model.model_id, run_id)
        tags.update({"model.registered_name": register_as, "model.registered_version": str(version)})
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return model.model_id


def unfinished(client, run, name: str):
    """This run's logged model `name` left PENDING by an interrupted `log_model`, if any."""
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'")
    from mlflow.entities import LoggedModelStatus

    return next((m for m in found if m.source_run_id == run.info.run_id and m.status == LoggedModelStatus.PENDING),
                None)


def register(client, name: str, model_id: str, run_id: str) -> str:
    """A new version of registered model `name` (created if missing) for `model_id`; its version number."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    for existing in client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"):
        if existing.model_id == model_id:
            return existing.version  # registered by an earlier try that failed afterwards
    import mlflow

    # a local registry store looks the models:/ source up with the global tracking URI, not the client's
    # (mlflow/store/model_registry/sqlalchemy_store.py): point it at ours; this process records one run
    mlflow.set_tracking_uri(client.tracking_uri)
    return client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id).version
