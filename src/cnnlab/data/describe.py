"""The dry run's look at the data: split sizes and image shapes from the files' headers, nothing decoded."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cnnlab.data.datasets import (  # noqa: F401 (check_dataset: for describe_data's example)
    DATA_DIR_ENV,
    KEYS,
    DatasetConfig,
    _source_key,
    _where_hint,
    check_dataset,
    data_file,
    val_count,
)
from cnnlab.errors import DataError


def npz_shapes(path: Path, spec: DatasetConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of a Keras-layout .npz's arrays, from their headers (no pixel is read). Raises DataError."""
    key = _source_key(spec)
    if not path.is_file():
        raise DataError(key, f"{spec.name} data file not found at {path}; {_where_hint(spec)}")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [k for k in KEYS if f"{k}.npy" not in names]
            if missing:
                raise DataError(key, f"{path} lacks the array(s) {', '.join(missing)} "
                                     f"(Keras layout: {', '.join(KEYS)})")
            shapes = {}
            for k in KEYS:
                with z.open(f"{k}.npy") as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shapes[k] = read(f)[0]
            return shapes
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(key, f"{path} is not a readable .npz file ({type(e).__name__}: {e}); "
                             f"{_where_hint(spec)}") from None


def describe_data(spec: DatasetConfig) -> str:
    """The dry run's data check, without decoding any image: where the data is, the split sizes.

    Raises DataError for what it can see already: a missing file or folder, a bad folder
    layout, a `val_size` that leaves no training images, images of the wrong shape.

    Example:
        >>> print(describe_data(check_dataset({"name": "synthetic", "input_shape": [8, 8, 1], "num_classes": 4,
        ...                                    "train_size": 100, "val_size": 20, "test_size": 30})))
        data: synthetic: 80 train, 20 val, 30 test images, 4 classes
    """
    lines = []
    if spec.name == "synthetic":
        source, n_train, n_test = "synthetic", spec.train_size or 1024, spec.test_size or 256
    elif spec.name == "folder":
        from cnnlab.data.folder import describe

        text, n_train, n_test = describe(spec)
        source = str(Path(spec.path).expanduser().resolve())
        lines.append(text)
    else:
        path = data_file(spec)
        if path is None:
            return f"data: {spec.name}: no file ({DATA_DIR_ENV} unset): Keras downloads it at the run's start"
        if not path.exists() and not spec.path:  # nothing to check yet (the model needs no data; a real run does)
            return f"data: {spec.name}: not checked: no file at {path} (a real run needs it)"
        shapes, source = npz_shapes(path, spec), str(path)
        for split in ("train", "test"):
            xs, ys = shapes[f"x_{split}"], shapes[f"y_{split}"]
            image = tuple(xs[1:]) + ((1,) if len(xs) == 3 else ())
            if image != tuple(spec.input_shape):
                raise DataError("dataset.input_shape", f"{list(spec.input_shape)} but {path} holds x_{split} images "
                                                       f"of shape {list(image)}")
            if xs[0] != ys[0]:
                raise DataError(_source_key(spec), f"{path} holds {xs[0]} x_{split} images but {ys[0]} y_{split} "
                                                   "labels; each image needs exactly one label")
        n_train, n_test = shapes["x_train"][0], shapes["x_test"][0]
    n_train = min(n_train, spec.train_size or n_train)
    n_test = min(n_test, spec.test_size or n_test)
    n_val = val_count(spec.val_size, n_train)
    if n_val >= n_train:
        raise DataError("dataset.val_size", f"{n_val} leaves no training images out of {n_train} in {source}")
    if not n_test:
        raise DataError(_source_key(spec), f"{source} holds no test images; every split needs images")
    lines.append(f"data: {spec.name}: {n_train - n_val} train, {n_val} val, {n_test} test images, "
                 f"{spec.num_classes} classes")
    return "\n".join(lines)
