"""Images read from their memory-mapped cache a batch at a time, so a folder larger than RAM still trains.

`LazyImages` stands in for a split's NumPy array (`len`, `shape`, `dtype`, slicing) but
holds only a row index into the raw uint8 cache of `cnnlab.data.folder`. As with NumPy,
a slice is another view (nothing read); an integer array, or `np.asarray`, reads those
rows and applies the split's transform (pixel range onto [0, 1], then `dataset.normalize`)
with the same functions as a loaded split (`cnnlab.data.checks.scale_pixels` and
`normalized`): a streamed run trains on the same values as one that
loaded the split (`dataset.in_memory`, README "Your own images").

Example:
    >>> raw = (np.arange(6, dtype=np.uint8) * 51).reshape(6, 1, 1, 1)
    >>> x = LazyImages(raw, np.array([5, 0, 1, 2, 3, 4])).scaled((0.0, 255.0))
    >>> x[:2].shape, x.dtype.name, len(x[1:])
    ((2, 1, 1, 1), 'float32', 5)
    >>> x[np.array([0, 1])].ravel().tolist(), float(x.max())
    ([1.0, 0.0], 1.0)
"""

from __future__ import annotations

import os

import numpy as np

CHUNK = 1024  # images per read when a whole split is walked (min/max, statistics, validation)


class LazyImages:
    """Rows `index` of `raw` (an array or memory map), scaled from `pixel_range` and normalized by `stats`."""

    def __init__(self, raw, index=None, pixel_range=None, stats=None):
        self.raw = raw
        self.index = np.arange(len(raw)) if index is None else np.asarray(index)
        self.pixel_range, self.stats = pixel_range, stats

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.raw.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.pixel_range else self.raw.dtype

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def scaled(self, pixel_range) -> LazyImages:
        """This view with the pixels mapped from `pixel_range` onto [0, 1] as they are read."""
        return LazyImages(self.raw, self.index, tuple(pixel_range), None)

    def normalized(self, stats) -> LazyImages:
        """This scaled view with (x - mean) / std per channel as it is read; `stats`: (mean, std) tuples."""
        return LazyImages(self.raw, self.index, self.pixel_range, stats)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return LazyImages(self.raw, self.index[key], self.pixel_range, self.stats)
        rows = self.index[key]
        return self._transform(self.raw[rows] if np.ndim(rows) else self.raw[int(rows)])

    def __array__(self, dtype=None, copy=None):
        out = self._transform(np.asarray(self.raw[self.index]))
        return out if dtype is None else out.astype(dtype, copy=False)

    def chunks(self, size: int = CHUNK):
        """The split in order, `size` images at a time, as arrays."""
        for start in range(0, len(self), size):
            yield np.asarray(self[start : start + size])

    def min(self, axis=None, out=None, **_):  # np.min(x) lands here: one pass, a chunk in memory at a time
        _whole(axis, out)
        return min(chunk.min() for chunk in self.chunks())

    def max(self, axis=None, out=None, **_):
        _whole(axis, out)
        return max(chunk.max() for chunk in self.chunks())

    def _transform(self, x: np.ndarray) -> np.ndarray:
        from cnnlab.data.checks import normalized, scale_pixels

        if not self.pixel_range:
            return np.asarray(x)
        out = scale_pixels(np.asarray(x), self.pixel_range)
        return normalized(out, self.stats) if self.stats else out


def _whole(axis, out) -> None:
    if axis is not None or out is not None:  # only the whole split's extreme is computed: say so, never guess
        raise TypeError("LazyImages.min/max reduce the whole split only (axis=None, out=None)")


def channel_stats(x: LazyImages) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of a scaled lazy split in two passes (float64 sums), a chunk at a time.

    Matches `normalize_stats` on the loaded split to within float64 rounding.

    >>> x = LazyImages(np.array([[[[0, 255]]], [[[255, 255]]]], np.uint8)).scaled((0.0, 255.0))
    >>> channel_stats(x)
    ((0.5, 1.0), (0.5, 1.0))
    """
    channels, n = x.shape[-1], 0
    total = np.zeros(channels)
    for chunk in x.chunks():
        flat = chunk.reshape(-1, channels)
        total += flat.sum(axis=0, dtype=np.float64)
        n += len(flat)
    mean = total / max(n, 1)
    square = np.zeros(channels)
    for chunk in x.chunks():
        square += ((chunk.reshape(-1, channels) - mean) ** 2).sum(axis=0)
    std = np.sqrt(square / max(n, 1))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: centred only
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def available_memory() -> int | None:
    """Bytes the kernel says can be given to a process now (MemAvailable), or None where it cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
