"""Data sets (config group `dataset`): MNIST, Fashion-MNIST, CIFAR-10, a synthetic set and your own images.

`dataset=folder dataset.path=DIR` reads a folder of images, one subfolder per class
(`cnnlab.data.folder`: layout, checks and the decoded cache).

Offline, `<name>.npz` (the Keras layout: x_train, y_train, x_test, y_test) is read
from `dataset.path` or the folder in $CNNLAB_DATA_DIR; otherwise
`keras.datasets.<name>.load_data()` downloads it. The test split is only
touched by the final evaluation. The arrays are checked as they load
(`cnnlab.data.checks`: finite pixels in a known range, integer labels in
[0, num_classes), one label per image, no empty split): a bad file ends in one
line before any MLflow run exists.

Example:
    >>> check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}, "dataset").val_size
    5000
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config.fields import (
    check_fields,
    choice,
    fraction,
    integer,
    optional,
    positive_int,
    rule,
    rules,
    shape,
    show,
    string,
)
from cnnlab.data.checks import (
    check_not_empty,
    check_raw_split,
    normalized,
    pixel_range,
    scale_pixels,
    source_range,
)
from cnnlab.data.lazy import LazyImages, available_memory, channel_stats
from cnnlab.errors import ConfigError, DataError

DATA_DIR_ENV = "CNNLAB_DATA_DIR"
# name → the image shape its files hold
KNOWN_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# the bundled data sets' classes, in label order (a folder's are its sorted subfolder names)
CLASS_NAMES = {
    "mnist": tuple("0123456789"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def count_or_fraction(v, path: str):
    """`dataset.val_size`: an image count (int >= 0) or a fraction of the training images in (0, 1)."""
    if isinstance(v, float) and 0 < v < 1:
        return v
    if isinstance(v, float) or isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(path, f"expected an image count >= 0 or a fraction in (0, 1), got {show(v)}")
    return v


def normalize_rule(v, path: str):
    """`dataset.normalize`: null (off), auto (per-channel mean/std of the training split) or {mean: [...], std: [...]}.

    Given values are in the scaled [0, 1] units (e.g. MNIST: {mean: [0.1307], std: [0.3081]}).
    """
    if v is None or v == "auto":
        return v
    if not isinstance(v, dict) or set(v) != {"mean", "std"}:
        raise ConfigError(path, f"expected null, auto or {{mean: [...], std: [...]}}, got {show(v)}")
    out = {}
    for key in ("mean", "std"):
        values = v[key] if isinstance(v[key], (list, tuple)) else [v[key]]
        if not values or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
                             for x in values):
            raise ConfigError(f"{path}.{key}", f"expected a list of numbers (one per channel), got {show(v[key])}")
        if key == "std" and min(values) <= 0:
            raise ConfigError(f"{path}.std", f"expected standard deviations > 0, got {show(v[key])}")
        out[key] = tuple(float(x) for x in values)
    return out


def in_memory_rule(v, path: str):
    """`dataset.in_memory`: auto, true or false."""
    if v == "auto" or isinstance(v, bool):
        return v
    raise ConfigError(path, f"expected auto, true or false, got {show(v)}")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """A checked `dataset` group: each key's type, rule and default, declared once (`cnnlab.config.fields.rule`)."""

    name: str = rule(choice(*KNOWN_SHAPES, "synthetic", "folder"))
    path: str | None = rule(optional(string), None)
    input_shape: tuple[int, ...] = rule(shape)
    num_classes: int = rule(positive_int)
    val_size: int | float = rule(count_or_fraction, 5000)
    train_size: int | None = rule(optional(positive_int), None)
    test_size: int | None = rule(optional(positive_int), None)
    # null: uint8 pixels are divided by 255 and any other pixels must already lie in [0, 1];
    # [lo, hi]: the file's pixels lie in [lo, hi] and are mapped onto [0, 1] (e.g. [0, 255] for float 0..255)
    pixel_range: tuple[float, float] | None = rule(pixel_range, None)
    # dataset=folder only (cnnlab.data.folder)
    test_split: float = rule(fraction, 0.2)  # without DIR/test: this fraction of each class is the test split
    split_seed: int = rule(integer, 0)  # seeds that split and the training images' order (so val is a random sample)
    # the decoded cache; null: $CNNLAB_CACHE_DIR, else ~/.cache/cnnlab
    cache_dir: str | None = rule(optional(string), None)
    # inside the model, after the scaling to [0, 1]: (x - mean) / std per channel
    normalize: str | dict | None = rule(normalize_rule, None)
    # dataset=folder: true loads the scaled splits; false reads batches from the memory-mapped cache;
    # auto loads them when they need under a quarter of the memory available (cnnlab.data.lazy)
    in_memory: str | bool = rule(in_memory_rule, "auto")


def check_dataset(cfg, path: str = "dataset") -> DatasetConfig:
    d = check_fields(cfg, rules(DatasetConfig), path)
    known = KNOWN_SHAPES.get(d["name"])
    if known and d["input_shape"] != known:
        raise ConfigError(
            f"{path}.input_shape", f"{show(list(d['input_shape']))} but {d['name']} images are {show(list(known))}"
        )
    if isinstance(d["normalize"], dict):
        channels = d["input_shape"][-1]
        for key, values in d["normalize"].items():
            if len(values) not in (1, channels):
                raise ConfigError(f"{path}.normalize.{key}", f"{len(values)} values for {channels} channel(s): "
                                                             f"give one per channel, or one for all")
    if d["name"] == "folder" and not d["path"]:
        raise ConfigError(f"{path}.path", "dataset=folder needs the folder: dataset.path=DIR "
                                          "(one subfolder of images per class)")
    if d["train_size"] is not None and isinstance(d["val_size"], int) and d["val_size"] >= d["train_size"]:
        raise ConfigError(
            f"{path}.val_size", f"{d['val_size']} leaves no training images out of train_size {d['train_size']}"
        )
    return DatasetConfig(**d)


@dataclass
class Data:
    """Pixels scaled to [0, 1] (float32, NHWC) and integer labels, split three ways (`load_raw`: unscaled).

    A folder's splits may be `cnnlab.data.lazy.LazyImages` (read from the cache a batch at a time).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # where the arrays came from, for the run's tags
    raw_dtype: str = "float32"  # what the file holds, before scaling: a served model takes that (cnnlab.record.export)
    pixel_range: tuple[float, float] = (0.0, 1.0)  # the raw range that was mapped onto [0, 1]
    class_names: tuple[str, ...] | None = None  # label i's name (None: the labels' numbers)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # per-channel (mean, std), applied


def data_file(spec: DatasetConfig) -> Path | None:
    """The .npz to read: `dataset.path`, else $CNNLAB_DATA_DIR/<name>.npz, else None (Keras downloads)."""
    if spec.path:
        return Path(spec.path).expanduser()
    folder = os.environ.get(DATA_DIR_ENV)
    return Path(folder).expanduser() / f"{spec.name}.npz" if folder else None


def load_data(spec: DatasetConfig) -> Data:
    """Load, check, scale and split the data set a validated `dataset` config names. Raises DataError."""
    raw = load_raw(spec)
    splits = (raw.x_train, raw.x_val, raw.x_test)
    if isinstance(raw.x_train, LazyImages) and not streamed(spec, splits):
        splits = tuple(np.asarray(x) for x in splits)
    scale, stats = scaled_splits(spec, raw.pixel_range, splits)
    return Data(scale[0], raw.y_train, scale[1], raw.y_val, scale[2], raw.y_test, raw.source,
                raw.raw_dtype, raw.pixel_range, raw.class_names, stats)


def scaled_splits(spec: DatasetConfig, pixel_range, splits) -> tuple[list, tuple | None]:
    """Raw `splits` (arrays, or a folder's lazy views; the first is the training split) as training sees
    them: scaled from `pixel_range` onto [0, 1], then `dataset.normalize`d; and the normalize statistics."""
    if isinstance(splits[0], LazyImages):
        out = [x.scaled(pixel_range) for x in splits]
        if not spec.normalize:
            return out, None
        stats = channel_stats(out[0]) if spec.normalize == "auto" else normalize_stats(spec, None)
        return [x.normalized(stats) for x in out], stats
    out = [scale_pixels(x, pixel_range) for x in splits]
    stats = normalize_stats(spec, out[0])
    return ([normalized(x, stats) for x in out] if stats else out), stats


def streamed(spec: DatasetConfig, splits) -> bool:
    """Whether a folder's splits stay in the cache (read a batch at a time) rather than load: `dataset.in_memory`."""
    if spec.in_memory != "auto":
        return not spec.in_memory
    need = sum(len(x) for x in splits) * int(np.prod(splits[0].shape[1:])) * 4  # float32, as training sees them
    free = available_memory()
    return free is not None and need > free // 4


def normalize_stats(spec: DatasetConfig, x_train_scaled: np.ndarray):
    """`dataset.normalize` as per-channel (mean, std) tuples: given, or of the scaled training split; None: off.

    >>> spec = check_dataset({"name": "synthetic", "input_shape": [2, 2, 3], "num_classes": 2, "normalize": "auto"})
    >>> x = np.stack([np.zeros((2, 2, 3)), np.ones((2, 2, 3))]).astype(np.float32)
    >>> normalize_stats(spec, x)
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if spec.normalize is None:
        return None
    channels = spec.input_shape[-1]
    if spec.normalize == "auto":
        flat = x_train_scaled.reshape(-1, channels)
        mean = flat.mean(axis=0, dtype=np.float64)
        std = np.sqrt(np.maximum(flat.var(axis=0, dtype=np.float64), 0.0))
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel: centred only
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    mean, std = spec.normalize["mean"], spec.normalize["std"]
    return tuple(mean * channels if len(mean) == 1 else mean), tuple(std * channels if len(std) == 1 else std)


def load_raw(spec: DatasetConfig) -> Data:
    """`load_data` without the scaling: the same checked splits, pixels as the file holds them.

    What a served model takes (`cnnlab.record.export`); `raw_split` gives one split of it.
    """
    names = CLASS_NAMES.get(spec.name)
    if spec.name == "synthetic":
        arrays, source = synthetic_arrays(spec), "synthetic"
    elif spec.name == "folder":
        from cnnlab.data.folder import folder_arrays

        arrays, source, names = folder_arrays(spec)
        names = tuple(names)
    else:
        path = data_file(spec)
        arrays, source = (_read_npz(path, spec), str(path)) if path else \
            (_download(spec), f"keras.datasets.{spec.name}")
    key = _source_key(spec)
    x_train, y_train = check_raw_split(arrays[0], arrays[1], "train", spec, source, key)
    x_test, y_test = check_raw_split(arrays[2], arrays[3], "test", spec, source, key)
    if spec.train_size:
        x_train, y_train = x_train[: spec.train_size], y_train[: spec.train_size]
    if spec.test_size:
        x_test, y_test = x_test[: spec.test_size], y_test[: spec.test_size]
    check_not_empty(len(x_train), "training images (x_train is empty)", source, key)
    check_not_empty(len(x_test), "test images (x_test is empty)", source, key)
    n_val = val_count(spec.val_size, len(x_train))
    if n_val >= len(x_train):
        raise DataError("dataset.val_size", f"{n_val} leaves no training images out of {len(x_train)} in {source}")
    cut = len(x_train) - n_val  # the last val_size images validate, as LTFN's 55,000/5,000 split
    raw_dtype = str(arrays[0].dtype)
    return Data(x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:], x_test, y_test, source,
                raw_dtype, source_range(raw_dtype, spec.pixel_range), names)


def val_count(val_size, n_train: int) -> int:
    """`dataset.val_size` as a count: itself, or its fraction of `n_train` images."""
    return int(round(val_size * n_train)) if isinstance(val_size, float) else val_size


SPLITS = ("train", "val", "test")


def raw_split(spec: DatasetConfig, split: str) -> tuple[np.ndarray, np.ndarray, Data]:
    """One split's raw checked (images, labels), and the `load_raw` Data it came from.

    Example:
        >>> spec = check_dataset({"name": "synthetic", "input_shape": [8, 8, 1], "num_classes": 4,
        ...                       "train_size": 100, "val_size": 20, "test_size": 30})
        >>> x, y, raw = raw_split(spec, "val")
        >>> x.shape, x.dtype.name, y.shape, raw.pixel_range
        ((20, 8, 8, 1), 'uint8', (20,), (0.0, 255.0))
    """
    if split not in SPLITS:
        raise ConfigError("split", f"{split!r} is not a split: choose one of {', '.join(SPLITS)}")
    raw = load_raw(spec)
    return getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}"), raw


KEYS = ("x_train", "y_train", "x_test", "y_test")


def _source_key(spec: DatasetConfig) -> str:
    """The setting that chose the file: what a user changes to point at a good one."""
    if spec.name == "synthetic":
        return "dataset.name"
    return "dataset.path" if spec.path else DATA_DIR_ENV


def _where_hint(spec: DatasetConfig) -> str:
    return (f"put {spec.name}.npz (keys {', '.join(KEYS)}) in a folder and set {DATA_DIR_ENV} to it, "
            "or set dataset.path")


def _read_npz(path: Path, spec: DatasetConfig):
    key = _source_key(spec)
    if not path.is_file():
        if key == DATA_DIR_ENV and not path.parent.is_dir():  # the folder itself is wrong, not the file in it
            raise DataError(key, f"the folder {path.parent} does not exist; set {DATA_DIR_ENV} to the folder that "
                                 f"holds {spec.name}.npz, as an absolute path (export {DATA_DIR_ENV}=/data/datasets)")
        raise DataError(key, f"{spec.name} data file not found at {path}; {_where_hint(spec)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise DataError(key, f"{path} lacks the array(s) {', '.join(missing)} "
                                     f"(Keras layout: {', '.join(KEYS)})")
            return tuple(f[k] for k in KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(key, f"{path} is not a readable .npz file ({type(e).__name__}: {e}); "
                             f"{_where_hint(spec)}") from None


def _download(spec: DatasetConfig):
    from cnnlab.backend import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, spec.name).load_data()
    except Exception as e:  # no network, a proxy, a truncated cache: all end the same way for the user
        raise DataError(
            DATA_DIR_ENV, f"could not download {spec.name} ({type(e).__name__}: {str(e)[:120]}); {_where_hint(spec)}"
        ) from None
    return x_train, y_train, x_test, y_test


def synthetic_arrays(spec: DatasetConfig, seed: int = 0):
    """A learnable toy set: class c has a bright square at the c-th cell of a grid, plus noise."""
    rng = np.random.default_rng(seed)
    h, w, c = spec.input_shape
    k = spec.num_classes
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    ch, cw = max(h // rows, 1), max(w // cols, 1)

    def make(n):
        y = rng.integers(0, k, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, h, w, c)).astype(np.uint8)
        for i, label in enumerate(y):
            r, q = divmod(int(label), cols)
            x[i, r * ch : (r + 1) * ch, q * cw : (q + 1) * cw, :] = 255
        return x, y

    n_train = spec.train_size or 1024
    x_train, y_train = make(n_train)
    x_test, y_test = make(spec.test_size or 256)
    return x_train, y_train, x_test, y_test


def with_folder_classes(cfg):
    """The config with dataset=folder's `num_classes: auto` replaced by the number of class folders.

    The model's output (`units: ${dataset.num_classes}`) then follows the folder. Any other
    config comes back as it is. Raises DataError for a missing folder or fewer than two classes.
    """
    from omegaconf import DictConfig, OmegaConf

    try:
        d = cfg["dataset"]
        if d["name"] != "folder" or d["num_classes"] not in ("auto", None) or not d["path"]:
            return cfg
        path = d["path"]
    except Exception:
        return cfg  # not there or not resolvable: the whole-config check names the key
    from cnnlab.data.folder import count_classes

    n = count_classes(str(path))
    if isinstance(cfg, DictConfig):
        cfg = cfg.copy()
        OmegaConf.update(cfg, "dataset.num_classes", n, force_add=True)
        return cfg
    return {**cfg, "dataset": {**cfg["dataset"], "num_classes": n}}
