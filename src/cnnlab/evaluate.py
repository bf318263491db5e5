"""`python -m cnnlab.evaluate MODEL_URI`: a logged or registered model's loss and accuracy on a data set split.

The model gets the split's raw images, as the data set stores them (what `cnnlab.record.export`
models take); the data set is the one its run trained on (its logged `dataset.*` params,
same train_size/val_size/test_size) unless `--dataset NAME` picks conf/dataset/NAME.yaml.
It prints the accuracy per class (by the class names the model carries), then the metrics on
one line, and records them as a new MLflow run,
`evaluate-<source run name>`, in the source run's experiment: tagged with the source run's
id, its metrics linked to the logged model and to the split (an MLflow dataset input), and
the confusion matrix as an artifact. The run is created only once the metrics exist.

Example:
    python -m cnnlab.evaluate runs:/<run_id>/model                 # its data set's test split
    python -m cnnlab.evaluate models:/mnist-cnn@champion --split val
    python -m cnnlab.evaluate runs:/<run_id>/model --dataset fashion_mnist --tracking-uri sqlite:///x/mlflow.db
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cnnlab.cli import EXIT_TRACKING, Arguments, fail, run_command
from cnnlab.data.datasets import SPLITS, DatasetConfig, raw_split, scaled_splits
from cnnlab.errors import ConfigError
from cnnlab.record.logged_model import dataset_input, log_inputs, split_input
from cnnlab.record.model_ref import check_fits, load_pyfunc, option_dataset, resolve, run_dataset
from cnnlab.record.plots import confusion_counts, confusion_matrix
from cnnlab.record.store import artifact_location, open_store, redact_uri, resolve_uri, sqlite_path
from cnnlab.record.tracking import ensure_experiment, flatten

CONTEXT = {"train": "train", "val": "validation", "test": "test"}  # MLflow's dataset context names
SOURCE_TAG = "cnnlab.source_run_id"


def arguments() -> Arguments:
    p = Arguments(prog="python -m cnnlab.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("model_uri", metavar="MODEL_URI", help="runs:/<run_id>/model, models:/<name>@<alias>, ...")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split (default: test)")
    p.add_argument("--dataset", metavar="NAME", help="a conf/dataset option (default: the one the run trained on)")
    p.add_argument("--tracking-uri", metavar="URI", help="the MLflow store (default: $MLFLOW_TRACKING_URI, "
                                                         "else <repo>/mlruns/mlflow.db)")
    return p


def open_client(tracking_uri: str | None):
    """An MlflowClient on the store to read; one line for a store that is not there."""
    uri = resolve_uri(tracking_uri)
    key = "MLFLOW_TRACKING_URI" if not tracking_uri and os.environ.get("MLFLOW_TRACKING_URI") else "--tracking-uri"
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(key, f"no MLflow store at {path} (no run has recorded there)")
    with open_store(uri):  # one bounded check: a dead server is one line, not minutes of retries
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(uri)  # pyfunc.load_model and the registry resolve URIs through it
        return MlflowClient(uri)


def scores(probabilities: np.ndarray, labels: np.ndarray, split: str) -> dict[str, float]:
    """Mean cross-entropy and accuracy of class probabilities.

    `mlflow.models.evaluate` is the field's tool for this, but it takes 2-D tables only (its
    EvaluationDataset refuses an N×H×W×C array), so the two numbers are computed here.
    Probabilities are clipped as Keras's cross-entropy does (1e-7), so a loss is never infinite.

    >>> m = scores(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), "test")
    >>> {k: round(v, 4) for k, v in m.items()}
    {'test_loss': 0.4149, 'test_accuracy': 0.6667}
    """
    p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    loss = float(-np.mean(np.log(p)))
    accuracy = float(np.mean(np.argmax(probabilities, axis=-1) == labels))
    return {f"{split}_loss": loss, f"{split}_accuracy": accuracy}


def predict(model, x, dtype, batch: int = 2000) -> np.ndarray:
    """The pyfunc model's probabilities for `x` (an array, or a folder's lazy split) as `dtype` images,
    a batch at a time (bounded memory for any split)."""
    return np.concatenate([np.asarray(model.predict(np.asarray(x[i : i + batch]).astype(dtype, copy=False)))
                           for i in range(0, len(x), batch)])


def evaluate(argv: list[str]) -> dict:
    args = arguments().parse_args(argv)
    client = open_client(args.tracking_uri)
    ref = resolve(client, args.model_uri)
    dataset = option_dataset(args.dataset) if args.dataset else run_dataset(ref)
    check_fits(ref, dataset, bool(args.dataset))
    x, y, raw = raw_split(dataset, args.split)
    if not len(x):
        raise ConfigError("--split", f"{args.split}: {dataset.name} holds no {args.split} images "
                                     f"(dataset.val_size is {dataset.val_size})")
    if x.dtype != ref.dtype and not np.can_cast(x.dtype, ref.dtype, "safe"):
        raise ConfigError("--dataset" if args.dataset else "MODEL_URI",
                          f"{dataset.name} holds {x.dtype} pixels but {ref.uri} takes {ref.dtype} images")
    started = time.perf_counter()
    model = load_pyfunc(ref.uri)  # imports TensorFlow: only once all the checks passed
    probabilities = predict(model, x, ref.dtype)
    metrics = scores(probabilities, y, args.split)
    matrix = confusion_counts(y, np.argmax(probabilities, axis=-1), ref.classes)
    seconds = time.perf_counter() - started
    # described as a training run describes it (the images scaled as it trained on them): the same digest
    # (the training split comes first when dataset.normalize takes its statistics from it)
    *_, scaled = scaled_splits(dataset, raw.pixel_range, (raw.x_train, x) if dataset.normalize else (x,))[0]
    data = split_input(f"{dataset.name}-{CONTEXT[args.split]}", CONTEXT[args.split],
                       scaled, y, raw.source, raw.raw_dtype)
    names = ref.class_names or (list(raw.class_names) if raw.class_names and len(raw.class_names) == ref.classes
                                else [str(c) for c in range(ref.classes)])
    run_id = record(client, ref, dataset, args.split, data, metrics, matrix, names)
    per_class = per_class_accuracy(matrix)
    print(per_class_table(names, matrix, per_class))  # the summary line last: the run id ends the output
    print(f"{ref.uri} on {dataset.name} {args.split} ({len(x)} images): "
          + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f" ({seconds:.1f} s), MLflow run {run_id}")
    return {**metrics, "run_id": run_id, "per_class": dict(zip(names, per_class))}


def per_class_accuracy(matrix: np.ndarray) -> list[float | None]:
    """Recall of each class: the share of its images predicted as it (None for a class with no images).

    >>> per_class_accuracy(np.array([[3, 1], [0, 0]]))
    [0.75, None]
    """
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / n) if n else None for i, n in enumerate(totals)]


def per_class_table(names: list[str], matrix: np.ndarray, accuracy: list) -> str:
    """One line per class: its name, images, accuracy on them."""
    width = max(len("class"), *(len(n) for n in names))
    rows = [f"  {'class':<{width}}  images  accuracy"]
    for name, n, a in zip(names, matrix.sum(axis=1), accuracy):
        rows.append(f"  {name:<{width}}  {int(n):>6}  {'-' if a is None else f'{a:.4f}':>8}")
    return "\n".join(rows)


def record(client, ref, dataset: DatasetConfig, split: str, data: dict, metrics: dict, matrix,
           names: list[str] | None = None) -> str:
    """The evaluation as a new, FINISHED MLflow run; one that fails part way ends FAILED with the reason.

    `data` is the split as `cnnlab.record.logged_model.split_input` describes it (the run's dataset input).
    """
    from mlflow.entities import LoggedModelInput, Metric, Param

    uri = client.tracking_uri
    data_input = dataset_input(data)
    with tempfile.TemporaryDirectory() as folder:
        figure = Path(folder) / "confusion_matrix.png"  # drawn before the run exists: less to fail after
        confusion_matrix(matrix, f"{ref.run_name}: {dataset.name} {split}", figure, names)
        with open_store(uri):
            experiment = ref.run.info.experiment_id if ref.run else ensure_experiment(client, "cnnlab",
                                                                                      artifact_location(uri))
            tags = {"cnnlab.evaluation": split, "cnnlab.model_uri": ref.uri, "mlflow.note.content":
                    f"Evaluation of {ref.uri} on {dataset.name} {split} ({data['rows']} images)"}
            if ref.run:
                tags[SOURCE_TAG] = ref.run.info.run_id
            run_id = client.create_run(experiment, run_name=f"evaluate-{ref.run_name}", tags=tags).info.run_id
        try:
            log_inputs(client, run_id, [data_input], [LoggedModelInput(ref.model_id)] if ref.model_id else None)
            params = {**flatten({"dataset": asdict(dataset)}), "split": split, "model_uri": ref.uri}
            now, d = int(time.time() * 1000), data_input.dataset
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                             metrics=[Metric(k, v, now, 0, model_id=ref.model_id, dataset_name=d.name,
                                             dataset_digest=d.digest) for k, v in metrics.items()])
            client.log_artifact(run_id, str(figure))
            client.log_dict(run_id, {"labels": list(range(len(matrix))), "class_names": names,
                                     "matrix": matrix.tolist()},
                            "confusion_matrix.json")
            client.set_terminated(run_id, "FINISHED")
        except BaseException as e:
            status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            try:
                client.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:500])  # as a failed training run's
                client.set_terminated(run_id, status)
            except Exception:
                pass  # the store itself broke: the line below says so
            if isinstance(e, KeyboardInterrupt):
                raise
            fail(f"cannot record the evaluation in MLflow at {redact_uri(uri)!r} (run {run_id} is {status}): "
                 f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", EXIT_TRACKING)
    return run_id


def main(argv: list[str] | None = None) -> None:
    run_command(evaluate, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
