"""What a MODEL_URI names: the MLflow model, the run that trained it, its input, its data set.

Shared by `python -m cnnlab.evaluate` and `python -m cnnlab.predict`. A MODEL_URI is
`runs:/<run_id>/model` (a run's logged model), `models:/<name>@<alias>` or
`models:/<name>/<version>` (the model registry) or `models:/<model_id>` (a logged model).
Everything here reads MLflow records and the model's MLmodel file only: a bad URI, a run
without a model or a data set that does not fit ends in one line before TensorFlow loads.

Example:
    >>> parse_uri("runs:/0a1b2c/model"), parse_uri("models:/mnist-cnn@champion")
    (('runs', '0a1b2c', 'model'), ('models', 'mnist-cnn', '@champion'))
    >>> parse_uri("runs:/0a1b2c")
    Traceback (most recent call last):
    ...
    cnnlab.errors.ConfigError: MODEL_URI: 'runs:/0a1b2c' is not a model URI: expected runs:/<run_id>/model, \
models:/<name>@<alias>, models:/<name>/<version> or models:/<model_id>
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass

import numpy as np

from cnnlab.config.fields import closest, show
from cnnlab.data.datasets import DatasetConfig, check_dataset
from cnnlab.errors import ConfigError
from cnnlab.record.store import redact_uri

KEY = "MODEL_URI"
FORMS = "runs:/<run_id>/model, models:/<name>@<alias>, models:/<name>/<version> or models:/<model_id>"


def parse_uri(uri: str) -> tuple[str, str, str]:
    """('runs', run_id, artifact path) or ('models', name or model id, '@alias' / '/version' / '')."""
    m = re.fullmatch(r"runs:/([0-9a-zA-Z]+)/(.+)", uri)
    if m:
        return "runs", m.group(1), m.group(2).strip("/")
    m = re.fullmatch(r"models:/([^/@]+)(@[^/@]+|/[0-9]+)?", uri)
    if m and (m.group(2) or m.group(1).startswith("m-")):
        return "models", m.group(1), m.group(2) or ""
    raise ConfigError(KEY, f"{uri!r} is not a model URI: expected {FORMS}")


@dataclass
class ModelRef:
    """A resolved MODEL_URI: the model's input and output, the run that trained it (if any)."""

    uri: str
    model_id: str | None  # the MLflow 3 logged model (metrics of an evaluation link to it)
    shape: tuple[int, ...]  # one raw image, e.g. (28, 28, 1)
    dtype: np.dtype  # e.g. uint8
    classes: int
    run: object | None  # mlflow.entities.Run that trained it; None for a registered model without one
    class_names: list[str] | None = None  # output i's name, from the model's metadata (None: unnamed)

    @property
    def run_name(self) -> str:
        return self.run.info.run_name if self.run else "model"


def resolve(client, uri: str) -> ModelRef:
    """Look `uri` up in the store `client` reads. Raises ConfigError (key MODEL_URI)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    kind, name, rest = parse_uri(uri)
    run = source_run(client, kind, name, rest, uri)
    # a runs:/ URI whose run logged no such model only fails when MLflow looks for its MLmodel file
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        meta = Model.load(uri)
    except MlflowException:
        if kind == "runs":
            raise ConfigError(KEY, f"run {name} ({run.info.run_name}) has no model at {rest!r}; "
                                   f"{logged_names(client, run)}") from None
        raise ConfigError(KEY, f"{uri}: the registry names a model whose files are missing") from None
    spec, out = meta.get_input_schema(), meta.get_output_schema()
    if spec is None or not spec.is_tensor_spec() or len(spec.inputs) != 1 or out is None or not out.is_tensor_spec():
        raise ConfigError(KEY, f"{uri} has no single image tensor in and probabilities out in its signature "
                               "(not a model cnnlab logged)")
    shape, dtype = tuple(spec.inputs[0].shape[1:]), np.dtype(spec.inputs[0].type)
    classes = int(out.inputs[0].shape[-1])
    names = (meta.metadata or {}).get("class_names")
    names = [str(c) for c in names] if isinstance(names, list) and len(names) == classes else None
    return ModelRef(uri, meta.model_id, shape, dtype, classes, run, names)


def source_run(client, kind: str, name: str, rest: str, uri: str):
    """The run that trained the model `uri` names (None for a registered model logged without one)."""
    from mlflow.exceptions import MlflowException

    store = redact_uri(client.tracking_uri)
    try:
        if kind == "runs":
            run_id = name
        elif not rest:
            run_id = client.get_logged_model(name).source_run_id
        else:
            try:
                client.get_registered_model(name)
            except MlflowException:
                raise ConfigError(KEY, f"no registered model {name!r} in {store}{registered_hint(client, name)}") \
                    from None
            if rest.startswith("@"):
                version = client.get_model_version_by_alias(name, rest[1:])
            else:
                version = client.get_model_version(name, rest[1:])
            run_id = version.run_id
        return client.get_run(run_id) if run_id else None
    except MlflowException as e:
        if kind == "runs":
            what = f"no run {name}"
        elif not rest:
            what = f"no logged model {name}"
        else:
            what = f"no {'alias ' + rest[1:] if rest.startswith('@') else 'version ' + rest[1:]} of model {name!r}"
        why = f" ({e.error_code})" if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") else ""
        raise ConfigError(KEY, f"{what} in {store}{why}") from None


def registered_hint(client, name: str) -> str:
    names = [m.name for m in client.search_registered_models(max_results=100)]
    return closest(name, names) or (f" (registered: {', '.join(names[:10])})" if names else " (none is registered)")


def logged_names(client, run) -> str:
    """What the run did log, to say instead."""
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
    names = sorted({m.name for m in found})
    if names:
        return f"its logged model(s): {', '.join(f'runs:/{run.info.run_id}/{n}' for n in names)}"
    return "it logged none (trained with tracking.log_model=false, or before runs logged their model)"


def run_dataset(ref: ModelRef) -> DatasetConfig:
    """The `dataset` config the source run trained on, rebuilt from its logged `dataset.*` params."""
    params = {k[len("dataset."):]: v for k, v in ref.run.data.params.items() if k.startswith("dataset.")} \
        if ref.run else {}
    if "name" not in params:
        who = f"run {ref.run.info.run_id} logged no dataset.* params" if ref.run else f"{ref.uri} has no source run"
        raise ConfigError("--dataset", f"not given, and {who}: name the data set, e.g. --dataset mnist")
    values = {}
    for k, v in params.items():  # a mapping was logged flat (normalize.mean, normalize.std): nest it again
        head, _, rest = k.partition(".")
        if rest:
            values.setdefault(head, {})[rest] = param_value(rest, v)
        else:
            values[k] = param_value(k, v)
    return check_dataset(values, "dataset")


def param_value(key: str, text: str):
    """A value back from its logged string (`cnnlab.record.tracking.flatten` wrote str(value)).

    >>> param_value("input_shape", "[28, 28, 1]"), param_value("path", "None"), param_value("path", "/d/x.npz")
    ([28, 28, 1], None, '/d/x.npz')
    """
    if text == "None":
        return None
    if key in ("name", "path"):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def option_dataset(name: str) -> DatasetConfig:
    """conf/dataset/<name>.yaml, composed as `python run.py dataset=<name>` would (no TensorFlow import)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from cnnlab.config.compose import CONF_DIR, to_plain

    options = sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, "dataset")) if p.endswith(".yaml"))
    if name not in options:
        raise ConfigError("--dataset", f"{name!r} is not a data set{closest(name, options)} "
                                       f"(conf/dataset: {', '.join(options)})")
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[f"dataset={name}"])
    except HydraException as e:
        raise ConfigError("--dataset", str(e).splitlines()[0]) from None
    return check_dataset(to_plain(cfg.dataset), "dataset")


def check_fits(ref: ModelRef, dataset: DatasetConfig, given: bool) -> None:
    """The data set's images and classes must be what the model takes and emits: one line naming both."""
    key = "--dataset" if given else KEY
    images = list(dataset.input_shape)
    if tuple(images) != ref.shape:
        raise ConfigError(key, f"{dataset.name} images are {show(images)} but {ref.uri} takes "
                               f"{show(list(ref.shape))} images")
    if dataset.num_classes != ref.classes:
        raise ConfigError(key, f"{dataset.name} has {dataset.num_classes} classes but {ref.uri} "
                               f"emits {ref.classes} probabilities")


def load_pyfunc(uri: str):
    """`mlflow.pyfunc.load_model(uri)`, with Keras imported the quiet cnnlab way and its predict() silent."""
    import warnings

    from cnnlab.backend import keras

    keras.config.disable_interactive_logging()  # no progress bar per predict() call on the console
    # the served model names its input "image"; a bare array is what pyfunc hands it, and is right
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(uri)
