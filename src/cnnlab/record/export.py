"""A trained network as an MLflow model that takes raw images: `serving_model`, `save`, `input_spec`.

The training pipeline scales pixels before the network sees them (`cnnlab.data.checks`);
a served model must not depend on that code. `serving_model` puts the scaling in front
of the network and a softmax after it, so the saved model maps raw images, as the data
set stores them (e.g. uint8 28×28×1), to class probabilities. `save` writes it with
MLflow's Keras flavor and a signature naming that input, so
`mlflow.pyfunc.load_model(uri).predict(raw_images)` and `mlflow models serve` just work.

In a run, `save_run_model` does both (timing itself) and the MLflow helper process uploads the
folder as the run's logged model (`cnnlab.record.logged_model`).

Example:
    >>> served = serving_model(model, (28, 28, 1), "uint8", (0.0, 255.0), from_logits=True)  # doctest: +SKIP
    >>> save(served, "/tmp/m")                                                                # doctest: +SKIP
    >>> mlflow.pyfunc.load_model("/tmp/m").predict(x_uint8).shape                             # doctest: +SKIP
    (10000, 10)
"""

from __future__ import annotations

import importlib.metadata as md
import tempfile
import time
from pathlib import Path

import numpy as np


def serving_model(model, input_shape, raw_dtype: str, pixel_range: tuple[float, float], from_logits: bool,
                  normalize=None):
    """`model` behind its input scaling ([lo, hi] → [0, 1]) and, for logits, a softmax.

    `raw_dtype` and `pixel_range` are the data set's: what its files hold, and the range the
    pipeline mapped onto [0, 1] (`Data.raw_dtype`, `Data.pixel_range`); `normalize`, per-channel
    (mean, std) applied after the scaling (`Data.normalize`, `dataset.normalize`).
    """
    from cnnlab.backend import keras

    lo, hi = (float(v) for v in pixel_range)
    raw = keras.Input(shape=tuple(input_shape), dtype=str(raw_dtype), name="image")
    # float32 explicitly: under a mixed-precision policy the network casts its own inputs
    x = keras.layers.Rescaling(1.0 / (hi - lo), offset=-lo / (hi - lo), dtype="float32", name="scale")(raw)
    if normalize:
        mean, std = (np.asarray(v, np.float32) for v in normalize)
        x = keras.layers.Rescaling(1.0 / std, offset=-mean / std, dtype="float32", name="normalize")(x)
    x = model(x)
    if from_logits:
        x = keras.layers.Softmax(dtype="float32", name="probabilities")(x)
    else:
        x = keras.layers.Activation("linear", dtype="float32", name="probabilities")(x)  # float32 out, always
    return keras.Model(raw, x, name=f"{model.name}_serving")


def signature(model):
    """The MLflow signature of a serving model: its raw-image tensor in, probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    (_, *shape) = model.inputs[0].shape
    classes = model.outputs[0].shape[-1]
    # the input unnamed: pyfunc then hands the array to Keras as it is (a named one arrives as a dict,
    # which Keras warns about on every predict); REST callers send {"inputs": [...]} either way
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(model.inputs[0].dtype), (-1, *shape))]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, classes), "probabilities")]))


def requirements() -> list[str]:
    """Pinned to what trained the model; given outright, since inferring them reloads the model in a subprocess."""
    from cnnlab.backend import keras

    backend = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[keras.backend.backend()]
    out = []
    for pkg in ("mlflow", "keras", backend, "numpy"):
        try:
            out.append(f"{pkg}=={md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(pkg)
    return out


def save(model, path, class_names=None) -> Path:
    """Write serving `model` as an MLflow model (Keras flavor + pyfunc) in the new folder `path`.

    `class_names` (output i's name) go into the MLmodel file's metadata: `{"class_names": [...]}`.
    """
    import mlflow.keras

    path = Path(path)
    metadata = {"class_names": [str(c) for c in class_names]} if class_names else None
    mlflow.keras.save_model(model, str(path), signature=signature(model), pip_requirements=requirements(),
                            metadata=metadata)
    return path


def save_run_model(model, data, from_logits: bool) -> tuple[Path, dict[str, float]]:
    """A trained network as a serving model for `data`'s raw images, saved in a new temporary folder.

    Also returns what the export cost this process: `export_seconds` and `export_cpu_seconds`
    (CPU time of all its threads), which the run records.
    """
    import shutil

    started, cpu = time.perf_counter(), time.process_time()
    served = serving_model(model, data.x_test.shape[1:], data.raw_dtype, data.pixel_range, from_logits,
                           getattr(data, "normalize", None))
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-model-"))
    try:
        save(served, folder, getattr(data, "class_names", None))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never a half-saved model left behind, or uploaded
        raise
    return folder, {"export_seconds": time.perf_counter() - started, "export_cpu_seconds": time.process_time() - cpu}


def input_spec(pyfunc_model) -> tuple[tuple[int, ...], np.dtype]:
    """The raw image shape (without the batch axis) and dtype a loaded model's signature asks for.

    Raises ValueError for a model without a tensor input signature (not one cnnlab logged).
    """
    meta = getattr(pyfunc_model, "metadata", None)
    sig = meta.get_input_schema() if meta else None
    if sig is None or not sig.is_tensor_spec() or len(sig.inputs) != 1:
        raise ValueError("the model has no single tensor input in its signature (not a cnnlab model?)")
    spec = sig.inputs[0]
    return tuple(spec.shape[1:]), spec.type
