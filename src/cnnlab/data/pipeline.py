"""Training batches for a step budget: the same batch order from two input pipelines (`trainer.pipeline`).

Batch i of a run is slice i % per_epoch of epoch i // per_epoch's order
(shuffled per epoch from `trainer.seed`, or file order). Both pipelines
yield exactly these batches:

- `pydataset`: a `keras.utils.PyDataset` slices NumPy arrays on a
  Python thread and is prefetched (on TensorFlow through `from_generator`, as
  Keras would wrap it). Runs on every backend.
- `tensors`: the training split is copied once into backend tensors and each
  batch is gathered by the backend. TensorFlow: a `tf.data` pipeline
  (index batch -> gather -> prefetch), no Python per batch. JAX: the arrays
  live on the default device (the GPU when there is one) and the gather
  runs there, so batches never cross the host bus.

`auto` (the default) is `tensors` on TensorFlow, as Keras itself feeds arrays
there (a 100-step LTFN5 run: fit took ~30% less CPU than through `from_generator`,
whose per-batch Python call hands the GIL between threads; benchmarks/RESULTS.md),
and `pydataset` on the other backends.

A split streamed from a folder's cache (`cnnlab.data.lazy`, `dataset.in_memory`) always goes
through `pydataset`, read and scaled a batch at a time; its validation split too (`ValidationStream`).

With augmentation (`augment`, `cnnlab.data.augment`) the batches always come from
`pydataset`'s NumPy slices, each augmented as it is drawn, seeded by its index in the run.

On TensorFlow every `tf.data` pipeline cnnlab hands to `model.fit`, the
validation split's included, has autotuning off (`without_autotune`).

Example:
    >>> orders = epoch_orders(5, batch_size=2, steps=4, shuffle=False, seed=0)
    >>> s = BatchStream(np.zeros((5, 1)), np.arange(5), 2, 4, orders)
    >>> [s[i][1].tolist() for i in range(4)]
    [[0, 1], [2, 3], [4], [0, 1]]
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.backend import keras
from cnnlab.data.lazy import LazyImages


def epoch_orders(n: int, batch_size: int, steps: int, shuffle: bool, seed: int) -> np.ndarray:
    """One row of example indices per epoch the budget touches."""
    epochs = math.ceil(steps / math.ceil(n / batch_size))
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) if shuffle else np.arange(n) for _ in range(epochs)])


class BatchStream(keras.utils.PyDataset):
    """The batches of a run from arrays: NumPy (sliced on the host) or backend tensors (gathered by the backend)."""

    def __init__(self, x, y, batch_size: int, steps: int, orders: np.ndarray, start: int = 0, augment=None):
        super().__init__()
        self.x, self.y, self.batch_size, self.steps, self.orders = x, y, batch_size, steps, orders
        self.augment = augment  # augment(x, i): the run's batch i augmented (`cnnlab.data.augment.Augmenter`)
        self.start = start  # item i is the run's batch start + i (a resumed run starts mid-order)
        self.per_epoch = math.ceil(len(x) / batch_size)
        self._on_backend = not isinstance(x, (np.ndarray, LazyImages))

    def __len__(self) -> int:
        return self.steps - self.start

    @property
    def fit_input(self):
        """What `model.fit` takes: the PyDataset itself, or on TensorFlow the same batches through
        `tf.data.Dataset.from_generator` (as Keras would build it, but without autotuning)."""
        if keras.backend.backend() != "tensorflow":
            return self
        import tensorflow as tf

        spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in self[0])
        dataset = tf.data.Dataset.from_generator(lambda: (self[i] for i in range(len(self))), output_signature=spec)
        return without_autotune(dataset.prefetch(2))

    def release(self) -> None:
        """Drop the arrays; a sweep worker runs many jobs and must not keep each one's data."""
        self.x = self.y = self.orders = self.augment = None

    def __getitem__(self, i: int):
        epoch, j = divmod(self.start + i, self.per_epoch)
        idx = self.orders[epoch][j * self.batch_size : (j + 1) * self.batch_size]
        if self._on_backend:
            idx = keras.ops.convert_to_tensor(idx)
            return keras.ops.take(self.x, idx, axis=0), keras.ops.take(self.y, idx, axis=0)
        if self.augment is not None:
            return self.augment(self.x[idx], self.start + i), self.y[idx]
        return self.x[idx], self.y[idx]


class TFDatasetBatches:
    """The same batches as a `tf.data.Dataset`: the split as graph constants, gathered and prefetched by TF."""

    def __init__(self, x, y, batch_size: int, steps: int, orders: np.ndarray, start: int = 0):
        import tensorflow as tf

        self.per_epoch = math.ceil(len(x) / batch_size)
        xs, ys = tf.constant(x), tf.constant(y)
        self.dataset = (
            tf.data.Dataset.from_tensor_slices(orders)
            .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
            .take(steps)
            .skip(start)  # a resumed run starts at its checkpoint's batch
            .map(lambda idx: (tf.gather(xs, idx), tf.gather(ys, idx)), num_parallel_calls=2, deterministic=True)
            .prefetch(2)
        )
        self.dataset = without_autotune(self.dataset)

    @property
    def fit_input(self):
        """What `model.fit` takes: the `tf.data.Dataset`."""
        return self.dataset

    def release(self) -> None:
        self.dataset = None


def without_autotune(dataset):
    """A `tf.data.Dataset` with no autotuning thread. Tearing down an iterator waits for that thread's
    next wake-up, which comes at a doubling period: a run sat idle for up to 30 s after training
    (at random, by where the period stood). Fixed buffers cost nothing here: one gather per batch.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def validation_input(x, y, batch_size: int = 500) -> dict:
    """`model.fit` keyword arguments for the validation split (none when it is empty)."""
    if not len(x):
        return {}
    if isinstance(x, LazyImages):
        return {"validation_data": ValidationStream(x, y, batch_size).fit_input}
    if keras.backend.backend() != "tensorflow":
        return {"validation_data": (x, y), "validation_batch_size": batch_size}
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(1)
    return {"validation_data": without_autotune(dataset)}


class ValidationStream(keras.utils.PyDataset):
    """A streamed validation split (`cnnlab.data.lazy.LazyImages`) in order, `batch_size` images a batch."""

    def __init__(self, x, y, batch_size: int):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int):
        window = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return np.asarray(self.x[window]), self.y[window]

    @property
    def fit_input(self):
        """The PyDataset, or on TensorFlow its batches through `from_generator` without autotuning."""
        if keras.backend.backend() != "tensorflow":
            return self
        import tensorflow as tf

        spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in self[0])
        # a new generator per pass: fit validates many times
        dataset = tf.data.Dataset.from_generator(lambda: (self[i] for i in range(len(self))), output_signature=spec)
        return without_autotune(dataset.prefetch(1))


def training_batches(x, y, batch_size: int, steps: int, *, shuffle: bool = True, seed: int = 0,
                     pipeline: str = "auto", start: int = 0, augment=None):
    """The run's batches from batch `start` on: `.fit_input` goes to `model.fit`; also `.per_epoch`, `.release()`.

    `shuffle`, `seed` and `pipeline` are the `trainer` group's keys of those names; `augment`
    the checked `augment` group (`cnnlab.data.augment.AugmentConfig`), None or no rows: none.
    """
    orders = epoch_orders(len(x), batch_size, steps, shuffle, seed)
    args = (batch_size, steps, orders, start)
    if augment is not None and augment.rows:
        from cnnlab.data.augment import Augmenter

        value_range = (0.0, 1.0)
        if any(kind == "contrast" for _, kind, _ in augment.rows) and len(x):
            value_range = (min(0.0, float(np.min(x))), max(1.0, float(np.max(x))))  # normalized pixels: wider
        return BatchStream(x, y, *args, augment=Augmenter(augment, seed, x.shape[1:], value_range))
    if pipeline == "auto":
        pipeline = "tensors" if keras.backend.backend() == "tensorflow" else "pydataset"
    if pipeline == "pydataset" or isinstance(x, LazyImages):  # a streamed split is read a batch at a time
        return BatchStream(x, y, *args)
    if keras.backend.backend() == "tensorflow":
        return TFDatasetBatches(x, y, *args)
    return BatchStream(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), *args)
