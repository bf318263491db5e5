"""Checks on a data set's arrays as they are loaded: one `DataError` line per problem, before any run exists.

Each split's arrays must agree in length and hold what training expects:

- pixels: finite; uint8 files are divided by 255; any other dtype must already lie
  in [0, 1] unless `dataset.pixel_range: [lo, hi]` says what range the file holds
  (then pixels are mapped from [lo, hi] onto [0, 1] and must lie inside it);
- labels: one integer class index per image (a float 3.0 is fine, 3.5 is refused,
  never truncated), in [0, num_classes).

`spec` is the checked `dataset` config (`cnnlab.data.datasets.DatasetConfig`); `key` is the
config key (or environment variable) that chose the file, so the user knows what to change;
`source` is the file itself.

Example:
    >>> import numpy as np
    >>> from cnnlab.data.datasets import check_dataset
    >>> spec = check_dataset({"name": "synthetic", "input_shape": [2, 2, 1], "num_classes": 3})
    >>> x, y = check_split(np.full((4, 2, 2), 255, np.uint8), np.arange(4) % 3, "train", spec, "f.npz", "dataset.path")
    >>> float(x.max()), y.dtype.name
    (1.0, 'int32')
    >>> check_split(np.zeros((4, 2, 2)), np.array([0, 1, 2, 3.5]), "train", spec, "f.npz", "dataset.path")
    Traceback (most recent call last):
    ...
    cnnlab.errors.DataError: dataset.path: y_train in f.npz holds fractional labels (3.5 at index 3); \
labels must be integer class indices in [0, 3)
"""

from __future__ import annotations

import numpy as np

from cnnlab.config.fields import number, show
from cnnlab.errors import ConfigError, DataError

UINT8_RANGE = (0.0, 255.0)
# float pixels written as x / 255 may land a rounding error outside [0, 1]; that is not a wrong scale
SLACK = 1e-6


def pixel_range(v, path: str):
    """`dataset.pixel_range`: null (uint8 → /255, other pixels already in [0, 1]) or [lo, hi] with lo < hi."""
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ConfigError(path, f"expected null or [low, high] such as [0, 255], got {show(v)}")
    lo, hi = (number(x, path) for x in v)
    if not lo < hi:
        raise ConfigError(path, f"expected [low, high] with low < high, got {show(v)}")
    return lo, hi


def source_range(dtype, given=None) -> tuple[float, float]:
    """The pixel range mapped onto [0, 1]: `dataset.pixel_range` if given, else [0, 255] for uint8, else [0, 1]."""
    if given:
        return float(given[0]), float(given[1])
    return UINT8_RANGE if np.dtype(dtype) == np.uint8 else (0.0, 1.0)


def check_split(x, y, split: str, spec, source: str, key: str):
    """One split's (images, labels) → (float32 NHWC pixels in [0, 1], int32 labels). Raises DataError."""
    x, y = check_raw_split(x, y, split, spec, source, key)
    return scale_pixels(x, source_range(x.dtype, spec.pixel_range)), y


def check_raw_split(x, y, split: str, spec, source: str, key: str):
    """`check_split` without the scaling: (NHWC pixels as the file holds them, int32 labels).

    What a served model takes (`cnnlab.record.export`): e.g. uint8 MNIST images with their channel axis.
    """
    x = x if hasattr(x, "chunks") else np.asarray(x)  # a folder's lazy split (cnnlab.data.lazy) is not loaded
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)  # CIFAR-10 ships labels as (n, 1)
    if y.ndim != 1:
        raise DataError(key, f"y_{split} in {source} has shape {list(y.shape)}; expected one integer label per "
                             "image, shape (n,) (one-hot labels: take their argmax)")
    if len(x) != len(y):
        raise DataError(key, f"{source} holds {len(x)} x_{split} images but {len(y)} y_{split} labels; "
                             "each image needs exactly one label")
    return check_pixels(x, split, spec, source, key), check_labels(y, split, spec, source, key)


def check_pixels(x: np.ndarray, split: str, spec, source: str, key: str) -> np.ndarray:
    """Raw NHWC pixels (a grayscale file gains its channel axis), checked: finite, in the data set's range."""
    if x.ndim == 3:
        x = x[..., None]  # add the channel axis to grayscale images
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise DataError("dataset.input_shape", f"{list(spec.input_shape)} but {source} holds x_{split} images "
                                               f"of shape {list(x.shape[1:])}")
    if x.dtype.kind not in "uif":
        raise DataError(key, f"x_{split} in {source} holds {x.dtype} values; expected numbers (uint8 or float pixels)")
    given = spec.pixel_range
    lo, hi = source_range(x.dtype, given)
    if not len(x) or (x.dtype == np.uint8 and not given):  # uint8 in [0, 255]: nothing to check, nothing read
        return x
    low, high = x.min(), x.max()  # NaN propagates through min/max, so two reductions test finiteness
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(x)
        first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        raise DataError(key, f"x_{split} in {source} holds {int(bad.sum())} NaN or infinite pixel value(s) "
                             f"(first in image {first}); fix or drop those images")
    if low < lo - SLACK * (hi - lo) or high > hi + SLACK * (hi - lo):
        found = f"{x.dtype} x_{split} pixels in [{low:g}, {high:g}]"
        if given:
            raise DataError("dataset.pixel_range",
                            f"[{lo:g}, {hi:g}] but {source} holds {found}, outside it")
        hint = "[0, 255]" if high <= 255 and low >= 0 else f"[{low:g}, {high:g}]"
        raise DataError("dataset.pixel_range",
                        f"null (float pixels must lie in [0, 1]) but {source} holds {found}; "
                        f"set dataset.pixel_range={hint.replace(' ', '')} to map that range onto [0, 1]")
    return x


def scale_pixels(x: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
    """Checked raw pixels → float32 in [0, 1], mapping `pixel_range` (`source_range`) onto it."""
    lo, hi = pixel_range
    out = x.astype(np.float32)  # a copy: the in-place steps below never touch the caller's array
    if (lo, hi) != (0.0, 1.0):
        if lo:
            out -= np.float32(lo)
        out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)  # within SLACK of the range: clip the rounding error away


def normalized(x: np.ndarray, stats) -> np.ndarray:
    """Scaled pixels (float32) → (x - mean) / std per channel, in place."""
    mean, std = (np.asarray(v, np.float32) for v in stats)
    x -= mean
    x /= std
    return x


def check_labels(y: np.ndarray, split: str, spec, source: str, key: str) -> np.ndarray:
    k = spec.num_classes
    where = f"y_{split} in {source}"
    if y.dtype.kind not in "uifb":
        raise DataError(key, f"{where} holds {y.dtype} values; labels must be integer class indices in [0, {k})")
    if not y.size:
        return y.astype(np.int32)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(key, f"{where} holds fractional labels ({y[i]:g} at index {i}); "
                                 f"labels must be integer class indices in [0, {k})")
    low, high = y.min(), y.max()
    if low < 0 or high >= k:
        i = int(np.argmax((y < 0) | (y >= k)))
        raise DataError("dataset.num_classes", f"{k} but {where} has label {y[i]:g} at index {i} "
                                               f"(labels span [{low:g}, {high:g}]; they must lie in [0, {k}))")
    return y.astype(np.int32)


def check_not_empty(n: int, what: str, source: str, key: str) -> None:
    """A split left with no images fails now, not after training."""
    if n == 0:
        raise DataError(key, f"{source} holds no {what}; every split needs images")
