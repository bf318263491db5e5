"""How many CPU cores a run's backends use: all of them, or the share a sweep job was given.

A sweep's callback gives each job its share of the machine (`cnnlab.sweep.cluster.cpus_per_job`) as
`CNNLAB_JOB_CPUS` in the job's environment (Hydra's `hydra.job.env_set`); SLURM gives
`SLURM_CPUS_PER_TASK`. `cnnlab.backend` sizes the backends' thread pools to it when it imports Keras.

Example:
    >>> os.environ.pop(CPUS_ENV, None) and None; os.environ.pop("SLURM_CPUS_PER_TASK", None) and None
    >>> job_cpus() is None
    True
"""

from __future__ import annotations

import os

CPUS_ENV = "CNNLAB_JOB_CPUS"  # CPU cores this job may use (0: the backends' own pools)
# tests: the CPU shown to the backend as N devices, so that `trainer.devices=N` runs data-parallel on a CPU host
CPU_DEVICES_ENV = "CNNLAB_CPU_DEVICES"


def job_cpus() -> int | None:
    """This process's CPU share ($CNNLAB_JOB_CPUS, else SLURM's $SLURM_CPUS_PER_TASK); None: all cores."""
    for key in (CPUS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def size_thread_pools(cpus: int | None) -> None:
    """Before Keras is imported: the variables that the OpenMP runtime and XLA (JAX) read when they start.

    TensorFlow's own pools are set on its config right after import (`set_tensorflow_threads`).
    """
    if not cpus:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
    if cpus == 1:  # XLA's CPU backend has one switch: one thread for its Eigen kernels, or all cores
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def set_tensorflow_threads(tf, cpus: int | None) -> None:
    """TensorFlow's intra-op pool to `cpus` threads, inter-op to at most 2 (once per process)."""
    if not cpus:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, cpus))
    except RuntimeError:
        pass  # a reused worker: its first job already started TensorFlow, with this sweep's same share


def simulated_cpu_devices() -> int:
    """$CNNLAB_CPU_DEVICES: how many devices the CPU is split into (1: not split, the default).

    For tests of `trainer.devices` on a machine without accelerators (as Keras's own multi-device
    tests do); N simulated devices share the same cores, so they are no faster than one.
    """
    value = os.environ.get(CPU_DEVICES_ENV, "")
    return int(value) if value.isdigit() and int(value) > 1 else 1


def split_cpu_for_jax(n: int) -> None:
    """Before JAX is imported: XLA's host platform as `n` CPU devices (XLA_FLAGS)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


def split_cpu_for_tensorflow(tf, n: int) -> None:
    """Before TensorFlow's runtime starts: the CPU as `n` logical devices (/cpu:0 ... /cpu:n-1)."""
    if n <= 1:
        return
    try:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        pass  # the runtime already started (a reused worker): it keeps the devices it started with
