"""Import Keras once, quietly, with the settings cnnlab wants; describe the device it runs on.

Every module takes Keras from here (`from cnnlab.backend import keras`, inside the
functions that need it), so config-only paths never pay for the import and the
settings below always apply first.

The backends' native libraries write start-up lines straight to file descriptor 2
(absl's "All log messages before absl::InitializeLog()", CUDA probes on a machine
without a GPU); `TF_CPP_MIN_LOG_LEVEL` does not reach absl. They are held back while
Keras imports and its devices are listed, and replayed if that fails.
`CNNLAB_VERBOSE=1` shows them as they come.
"""

import contextlib
import os
import signal
import sys
import tempfile
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
# concurrent sweep jobs share one GPU: no backend may grab all of its memory up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM during the block are delivered as it ends, to the handlers in place before it.

    Raised inside a library's import, an interrupt can be swallowed by the library's own `except`
    (the run then trained to its end) and leave that module's import lock taken, so the recorder's
    thread, importing MLflow (the same numpy/scipy modules), waited forever (`benchmarks/ctrl_c.py`:
    SIGINT ~4 s after launch). The block is the few seconds of Keras's import.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def native_stderr_held_back():
    """Send fd 2 to a temporary file for the block; replay it to stderr if the block fails (not on Ctrl-C)."""
    if os.environ.get("CNNLAB_VERBOSE", "0") not in ("", "0") or not hasattr(os, "dup"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except KeyboardInterrupt:  # Ctrl-C mid-import: the user asked to stop, not for the libraries' chatter
            raise
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


from cnnlab.threads import (  # noqa: E402
    job_cpus,
    set_tensorflow_threads,
    simulated_cpu_devices,
    size_thread_pools,
    split_cpu_for_jax,
    split_cpu_for_tensorflow,
)

size_thread_pools(job_cpus())  # a sweep job uses its share of the machine's cores, no more
split_cpu_for_jax(simulated_cpu_devices())  # $CNNLAB_CPU_DEVICES (tests of trainer.devices): before JAX starts

with signals_deferred(), native_stderr_held_back():
    import keras  # noqa: E402

    if keras.backend.backend() == "tensorflow":
        import tensorflow as _tf

        set_tensorflow_threads(_tf, job_cpus())  # before the runtime starts
        split_cpu_for_tensorflow(_tf, simulated_cpu_devices())
        _tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") happens here

__all__ = ["keras", "iterations", "device_name", "set_random_seed", "make_deterministic", "bfloat16_is_native",
           "dtype_policy"]


def iterations(model) -> int:
    """Optimizer steps taken so far (backend-agnostic)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


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


def freeze_imports() -> None:
    """End the start-up's pause of the garbage collector: freeze what the imports made, collect again.

    `run.py` (a single run) and each sweep worker start with `gc.disable()`: importing TensorFlow, Keras
    and MLflow makes ~700,000 objects and no garbage to speak of, yet 9 full collections walked them
    all, 1.2 CPU-s of a 30-step LTFN5 run (`gc.callbacks`). Before the first model is built, `gc.freeze`
    (made for this) moves those objects to a generation no collection visits, and collection resumes
    for what the run creates (Keras's `clear_session` collects once per sweep job: now over a job's
    objects only). Where the collector was left on (a library user, the tests) this does nothing.
    """
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed`, whose first call imports TensorFlow (to seed tf.data) on every backend:
    on JAX or torch that import's start-up lines are held back like Keras's own."""
    with signals_deferred(), native_stderr_held_back():
        keras.utils.set_random_seed(seed)


def make_deterministic() -> None:
    """Bit-identical reruns on the TensorFlow backend (slower kernels)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def bfloat16_is_native() -> bool:
    """Whether the device computes in bfloat16 natively, so that mixed_bfloat16 is faster, not slower.

    GPUs from NVIDIA Ampere on (compute capability 8.0) and TPUs do; on the CPU,
    Intel AMX or AVX512-BF16 does (elsewhere bfloat16 is emulated and far slower).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))) >= (8, 0)
    elif backend == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform == "tpu":
            return True
        if d.platform == "gpu":
            return float(getattr(d, "compute_capability", 0) or 0) >= 8.0
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()  # not Linux: assume no native bfloat16


def dtype_policy(mixed_precision: str | None) -> str:
    """The Keras dtype policy for `trainer.mixed_precision` (`auto`: mixed_bfloat16 where it is native)."""
    if mixed_precision == "auto":
        return "mixed_bfloat16" if bfloat16_is_native() else "float32"
    return mixed_precision or "float32"
