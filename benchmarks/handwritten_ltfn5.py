"""The baseline: LTFN5 on MNIST as a user would write it by hand in Keras, nothing from cnnlab.

    python benchmarks/handwritten_ltfn5.py --steps 100

Same network, init (He hidden, Glorot output, zero biases), SGD 1e-3, batch 100,
the last 5,000 training images held out and validated once at the end, then the
test set evaluated. Prints one JSON line of timings for benchmarks/bench.py.
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402


class Timer(keras.callbacks.Callback):
    """images/s over steps 2..N without validation, and when step 1 ended (as cnnlab measures)."""

    def on_train_begin(self, logs=None):
        self.first, self.seconds, self.steps, self.last = None, 0.0, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.last = time.perf_counter() if self.first else None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.first is None:
            self.first = time.time()
        elif self.last is not None:
            self.seconds, self.steps = self.seconds + now - self.last, self.steps + 1
        self.last = now


def load_mnist():
    path = os.path.join(os.environ.get("CNNLAB_DATA_DIR", "."), "mnist.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            (x, y), (x_test, y_test) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    else:
        (x, y), (x_test, y_test) = keras.datasets.mnist.load_data()
    return x[..., None].astype("float32") / 255, y, x_test[..., None].astype("float32") / 255, y_test


def ltfn5(seed=0):
    keras.utils.set_random_seed(seed)
    he, glorot = keras.initializers.HeNormal, keras.initializers.GlorotUniform
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer=he()),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer=he()),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu", kernel_initializer=he()),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu", kernel_initializer=he()),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, kernel_initializer=glorot()),
    ])
    model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    x, y, x_test, y_test = load_mnist()
    model = ltfn5()
    timer = Timer()
    model.fit(x[:55000], y[:55000], batch_size=args.batch_size, epochs=1, steps_per_epoch=args.steps,
              validation_data=(x[55000:], y[55000:]), validation_batch_size=500, callbacks=[timer], verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    print(json.dumps({"first_step_unix": timer.first, "images_per_second": timer.steps * args.batch_size / timer.seconds,
                      "test_accuracy": accuracy, "test_loss": loss}))


if __name__ == "__main__":
    main()
