"""Import Keras once, quietly, with the settings cnnlab wants; describe the device it runs on.

`from cnnlab.backend import keras` is the one place the heavy import
happens, so config-only paths never pay for it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
# concurrent sweep jobs share one GPU: no backend may grab all of its memory up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import keras  # noqa: E402

__all__ = ["keras", "device_name", "make_deterministic"]


def device_name() -> str:
    """'GPU:0 (NVIDIA H100 ...)' or 'CPU' for the backend in use."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU:0 ({details.get('device_name', 'unknown')}) of {len(gpus)}"
        return "CPU"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform.upper()}:{d.id} ({d.device_kind})"
    if backend == "torch":
        import torch

        return f"GPU:0 ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    return backend


def make_deterministic() -> None:
    """Bit-identical reruns on the TensorFlow backend (slower kernels)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
