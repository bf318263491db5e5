"""Both input pipelines feed exactly the same batches, in the same order, as the step budget asks."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.backend import keras
from cnnlab.data.pipeline import BatchStream, TFDatasetBatches, epoch_orders, training_batches

N, BATCH, STEPS = 23, 5, 13  # 5 batches per epoch, the last one short; 13 steps run into a third epoch


def as_numpy(batches):
    return [(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y)) for x, y in batches]


def data():
    x = np.arange(N * 4, dtype="float32").reshape(N, 2, 2, 1)
    return x, np.arange(N, dtype="int32")


@pytest.mark.parametrize("shuffle", [False, True])
def test_pipelines_yield_identical_batches(shuffle):
    x, y = data()
    orders = epoch_orders(N, BATCH, STEPS, shuffle=shuffle, seed=3)
    numpy_stream = as_numpy(BatchStream(x, y, BATCH, STEPS, orders)[i] for i in range(STEPS))
    tensor_stream = BatchStream(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), BATCH, STEPS, orders)
    gathered = as_numpy(tensor_stream[i] for i in range(STEPS))
    tf_data = as_numpy(TFDatasetBatches(x, y, BATCH, STEPS, orders).dataset)
    assert len(numpy_stream) == len(gathered) == len(tf_data) == STEPS
    for a, b, c in zip(numpy_stream, gathered, tf_data):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[1], c[1])
        np.testing.assert_array_equal(a[0][:, 0, 0, 0], a[1] * 4.0)  # images stay with their labels


def test_batch_order_walks_epochs():
    x, y = data()
    orders = epoch_orders(N, BATCH, STEPS, shuffle=True, seed=0)
    labels = [b[1] for b in as_numpy(TFDatasetBatches(x, y, BATCH, STEPS, orders).dataset)]
    sizes = [len(b) for b in labels]
    assert sizes == [5, 5, 5, 5, 3] * 2 + [5, 5, 5]
    first, second = np.concatenate(labels[:5]), np.concatenate(labels[5:10])
    assert sorted(first) == sorted(second) == list(range(N))  # each epoch sees every example once
    assert not np.array_equal(first, second)  # reshuffled per epoch
    assert not np.array_equal(orders[0], epoch_orders(N, BATCH, STEPS, shuffle=True, seed=1)[0])


def test_training_batches_picks_the_configured_pipeline():
    x, y = data()
    assert isinstance(training_batches(x, y, BATCH, STEPS, shuffle=False, pipeline="pydataset"), BatchStream)
    tensors = training_batches(x, y, BATCH, STEPS, shuffle=False, pipeline="tensors")
    assert isinstance(tensors, TFDatasetBatches)  # the suite runs on TensorFlow; JAX is covered by test_backends
    assert isinstance(training_batches(x, y, BATCH, STEPS, shuffle=False, pipeline="auto"), TFDatasetBatches)
    tensors.release()
    assert tensors.dataset is None


class Recorder(keras.layers.Layer):
    """Passes its input through; in training, notes which examples (row id = x[:, 0]) each step saw."""

    def __init__(self, seen: list, **kwargs):
        super().__init__(**kwargs)
        self.note = seen.append  # not the list itself: Keras would track a copy of it

    def call(self, x, training=None):
        if training:
            self.note(keras.ops.convert_to_numpy(x)[:, 0].astype(int).tolist())
        return x


@pytest.mark.parametrize("pipeline", ["pydataset", "tensors"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_model_fit_sees_the_planned_batches(pipeline, shuffle):
    """Through Keras's own `fit`, validation chunks included, each step gets exactly the planned batch.

    (Keras permutes a PyDataset's batches unless fit gets shuffle=False: this caught that.)
    """
    from types import SimpleNamespace

    from cnnlab.run.fit import fit
    from cnnlab.run.trainer import check_trainer

    x = np.repeat(np.arange(N, dtype="float32")[:, None], 3, axis=1)
    y = np.arange(N, dtype="int32") % 2
    seen = []
    model = keras.Sequential([keras.Input((3,)), Recorder(seen), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy", run_eagerly=True)
    trainer = check_trainer({"steps": STEPS, "batch_size": BATCH, "eval_every": 4, "shuffle": shuffle,
                             "pipeline": pipeline, "verbose": 0, "seed": 5})
    data = SimpleNamespace(x_train=x, y_train=y, x_val=x[:4], y_val=y[:4])
    result = fit(model, data, trainer)
    orders = epoch_orders(N, BATCH, STEPS, shuffle=shuffle, seed=5)
    planned = [orders[i // 5][(i % 5) * BATCH : (i % 5 + 1) * BATCH].tolist() for i in range(STEPS)]
    assert result.steps == STEPS
    assert seen == planned


@pytest.mark.parametrize("pipeline", ["pydataset", "tensors"])
def test_fit_inputs_have_no_tf_data_autotuning(pipeline):
    """An autotuned iterator's teardown waits for the autotuning thread's next wake-up (up to ~30 s seen)."""
    import tensorflow as tf

    from cnnlab.data.pipeline import validation_input

    x, y = data()
    inputs = [training_batches(x, y, BATCH, STEPS, shuffle=False, pipeline=pipeline).fit_input,
              validation_input(x, y)["validation_data"]]
    for dataset in inputs:
        assert isinstance(dataset, tf.data.Dataset)
        assert dataset.options().autotune.enabled is False
    assert validation_input(x[:0], y[:0]) == {}


@pytest.mark.parametrize("pipeline", ["pydataset", "tensors"])
def test_a_resumed_stream_starts_at_its_batch(pipeline):
    """A run resumed at step k is fed batches k, k+1, ... of the uninterrupted run's order."""
    x, y = data()
    whole = as_numpy(training_batches(x, y, BATCH, STEPS, seed=4, pipeline=pipeline).fit_input)
    resumed = as_numpy(training_batches(x, y, BATCH, STEPS, seed=4, pipeline=pipeline, start=7).fit_input)
    assert len(resumed) == STEPS - 7
    for a, b in zip(whole[7:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(b[0][:, 0, 0, 0], b[1] * 4.0)  # each image with its own label
