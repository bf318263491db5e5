"""`trainer.devices`: one run data-parallel over several devices, through Keras's own distribution.

- JAX: `keras.distribution.DataParallel` over the devices (set while the model is built,
  compiled and trained; unset after, so a sweep worker's next job starts single-device).
  The step is one SPMD program: each batch is sharded over the devices, the gradients
  all-reduced, and BatchNormalization sees the global batch.
- TensorFlow: `tf.distribute.MirroredStrategy`, the model built and compiled in its scope
  (Keras's fit then splits each batch over the replicas). BatchNormalization normalizes per
  replica, as Keras's MirroredStrategy does.
- PyTorch: Keras 3 has no distribution backend for torch (`keras.distribution` lists JAX and
  TensorFlow), so `trainer.devices` > 1 is refused there.

`trainer.batch_size` is the global batch: each of N devices takes batch_size / N images of it,
so a config trains the same run on 1 or N devices. `auto` is every accelerator (GPU/TPU) of the
machine, 1 on a CPU-only one; a CPU can be split into simulated devices for tests
(`CNNLAB_CPU_DEVICES`, `cnnlab.threads`), then asked for by number.

Example:
    >>> DevicePlan("jax", ("CPU:0", "CPU:1"), 100).describe()
    'Devices: 2 (CPU:0, CPU:1), data-parallel (keras.distribution.DataParallel): 50 images each of the global batch 100'
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from cnnlab.errors import ConfigError

KEY = "trainer.devices"


@dataclass(frozen=True)
class DevicePlan:
    backend: str
    names: tuple[str, ...]  # the devices, as the backend names them ("GPU:0", "CPU:1"); () for the default one
    batch_size: int  # the global batch
    _strategy: list = field(default_factory=list, compare=False, repr=False)  # TF: the one MirroredStrategy

    @property
    def count(self) -> int:
        return max(1, len(self.names))

    @property
    def per_device_batch(self) -> int:
        return self.batch_size // self.count

    @property
    def parallel(self) -> bool:
        return self.count > 1

    def describe(self) -> str:
        """The dry run's line: the devices and the per-device batch."""
        if not self.parallel:
            return f"Devices: 1 (the backend's default device), batch {self.batch_size}"
        how = "tf.distribute.MirroredStrategy" if self.backend == "tensorflow" else "keras.distribution.DataParallel"
        return (f"Devices: {self.count} ({', '.join(self.names)}), data-parallel ({how}): "
                f"{self.per_device_batch} images each of the global batch {self.batch_size}")

    def tags(self) -> dict[str, str]:
        """What the run records: the device count and, data-parallel, which devices."""
        return {"devices": str(self.count), **({"devices.names": ",".join(self.names)} if self.parallel else {})}

    def strategy(self):
        if not self._strategy:
            import tensorflow as tf

            self._strategy.append(tf.distribute.MirroredStrategy([f"/{n.lower()}" for n in self.names]))
        return self._strategy[0]

    @contextlib.contextmanager
    def scope(self):
        """Build, compile, restore and fit in here: the backend's data-parallel distribution (nothing for 1)."""
        if not self.parallel:
            yield
            return
        if self.backend == "tensorflow":
            with self.strategy().scope():
                yield
            return
        from cnnlab.backend import keras

        previous = keras.distribution.distribution()
        devices = [d for d in keras.distribution.list_devices() if _name(d) in self.names]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)  # a sweep worker's next job: single-device again


def _name(device: str) -> str:
    """Keras's 'cpu:1' / TensorFlow's '/device:CPU:1' as 'CPU:1'."""
    kind, _, index = device.rsplit("/", 1)[-1].replace("device:", "").rpartition(":")
    return f"{kind.upper()}:{index}"


def available() -> tuple[str, ...]:
    """This process's devices for data parallelism: its accelerators, else its (possibly simulated) CPUs."""
    from cnnlab.backend import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tuple(_name(d.name) for d in found)
    if backend == "jax":
        return tuple(_name(d) for d in keras.distribution.list_devices())
    return ()


def plan(trainer, n_train: int | None = None, n_val: int | None = None) -> DevicePlan:
    """The run's devices for `trainer.devices`; ConfigError (one line) for a request this machine cannot run.

    `trainer.devices=1` needs no backend (the default path is untouched). On JAX every batch fit sees
    must divide over the devices, the last of each epoch (`n_train`) and of the validation split
    (`n_val`, batches of 500) included; TensorFlow's MirroredStrategy splits uneven batches itself.
    """
    if trainer.devices == 1:
        return DevicePlan("", (), trainer.batch_size)
    from cnnlab.backend import keras

    backend = keras.backend.backend()
    found = available()
    accelerators = [n for n in found if not n.startswith("CPU")]
    if trainer.devices == "auto":
        wanted = len(accelerators) or 1
        if wanted == 1:
            return DevicePlan("", (), trainer.batch_size)
    else:
        wanted = trainer.devices
    if backend not in ("jax", "tensorflow"):
        raise ConfigError(KEY, f"{wanted} devices need the JAX or TensorFlow backend: Keras {keras.__version__} "
                               f"has no data-parallel distribution for {backend} (KERAS_BACKEND=jax or tensorflow)")
    pool = accelerators or list(found)
    if wanted > len(pool):
        kind = "accelerator" if accelerators else "CPU device"
        hint = "" if accelerators else " (tests split the CPU into N simulated devices with CNNLAB_CPU_DEVICES=N)"
        raise ConfigError(KEY, f"{wanted} but this machine's {backend} backend has {len(pool)} {kind}"
                               f"{'s' if len(pool) != 1 else ''}{hint}")
    if trainer.batch_size % wanted:
        raise ConfigError("trainer.batch_size", f"{trainer.batch_size} does not divide over {wanted} devices "
                                                f"({KEY}={trainer.devices}): the global batch is split evenly")
    if backend == "jax":  # every sharded batch must divide: the epoch's last, the validation split's last
        for key, split, n, batch in (("dataset.train_size", "training", n_train, trainer.batch_size),
                                     ("dataset.val_size", "validation", n_val, 500)):
            last = (n or 0) % batch
            if last % wanted:
                raise ConfigError(key, f"the {split} split's {n} images leave a last batch of {last}, which does "
                                       f"not divide over "
                                       f"{wanted} devices (JAX shards every batch evenly): pick a size or "
                                       f"trainer.batch_size that does")
    return DevicePlan(backend, tuple(pool[:wanted]), trainer.batch_size)


def plain_copy(model, arch, seed: int):
    """A single-device copy of a data-parallel model (same weights): what is evaluated and logged to MLflow."""
    from cnnlab.backend import keras
    from cnnlab.model.builder import build_model

    plain = build_model(arch, seed)
    plain.set_weights([keras.ops.convert_to_numpy(w) for w in model.weights])
    return plain


__all__ = ["DevicePlan", "plan", "available", "plain_copy"]
