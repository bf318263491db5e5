"""What a sweep job needs wherever it runs: its context in its own config, a store it can reach, its CPU share.

Hydra's launchers (cnnlab, joblib, Ray, submitit) all build each job's config with
`config_loader.load_sweep_config(master_config, job_overrides)`, which composes it again
from `hydra.overrides.hydra` plus the job's overrides, and `run_job` applies the job
config's `hydra.job.env_set` inside the job's process. So the sweep's callback puts the
job context (parent run id, swept keys, resume plan, CPUs per job) into
`hydra.overrides.hydra` as `hydra.job.env_set.*` overrides: the context travels with the
job's config to another process, another Ray node or a SLURM node, where inherited
environment variables never arrive.

Example:
    >>> env_set_override("CNNLAB_SWEEP_KEYS", "init,optimizer.lr")
    "++hydra.job.env_set.CNNLAB_SWEEP_KEYS='init,optimizer.lr'"
    >>> is_local_file("sqlite:////tmp/x/mlflow.db"), is_local_file("http://127.0.0.1:5000")
    (True, False)
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.errors import ConfigError

CPUS_ENV = "CNNLAB_JOB_CPUS"  # CPU cores this job may use (its thread pools are sized to it)
PARENT_ENV = "CNNLAB_SWEEP_PARENT_RUN_ID"  # the sweep's parent run, set for each job by cnnlab.sweep.callback
KEYS_ENV = "CNNLAB_SWEEP_KEYS"  # the swept keys, which name each job's child run
JOB_ENV = "CNNLAB_SWEEP_JOB"  # the job's index while it runs; its MLflow run carries it as a tag


def env_set_override(key: str, value: str) -> str:
    """A Hydra override setting `hydra.job.env_set.<key>`, quoted so commas and spaces stay one value."""
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"++hydra.job.env_set.{key}='{escaped}'"


def attach_job_context(config: DictConfig, env: dict[str, str]) -> None:
    """Make every job of this sweep run with `env` set, in whatever process or machine runs it.

    `config` is the sweep's config as the callback's `on_multirun_start` gets it: the same
    object the launcher then composes each job from.
    """
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.extend([env_set_override(k, v) for k, v in env.items()])
        for key, value in env.items():  # also in multirun.yaml's hydra.job, for the record
            config.hydra.job.env_set[key] = str(value)


def launcher_name(config: DictConfig) -> str:
    """'cnnlab', 'joblib', 'ray', 'submitit_local', 'submitit_slurm' or the launcher's class name."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    cls = target.rsplit(".", 1)[-1]
    return {"CnnlabLauncher": "cnnlab", "JoblibLauncher": "joblib", "RayLauncher": "ray",
            "CnnlabRayLauncher": "ray", "LocalLauncher": "submitit_local", "CnnlabLocalLauncher": "submitit_local",
            "SlurmLauncher": "submitit_slurm", "CnnlabSlurmLauncher": "submitit_slurm"}.get(cls, cls)


def runs_elsewhere(config: DictConfig) -> bool:
    """Whether the jobs may run on other machines: Ray given a cluster's address, or SLURM."""
    name = launcher_name(config)
    if name == "ray":
        address = OmegaConf.select(config, "hydra.launcher.ray.init.address")
        return address not in (None, "", "local")  # no address: Ray starts on this machine
    return name == "submitit_slurm"


def is_local_file(uri: str) -> bool:
    """A store that lives in this machine's files (SQLite, a file store) rather than behind a server."""
    return uri.startswith("sqlite:") or urlsplit(uri).scheme in ("", "file")


def check_reachable_store(config: DictConfig, uri: str, shared_filesystem: bool) -> None:
    """ConfigError unless the jobs can reach the store: a local file on a cluster needs a shared filesystem."""
    if shared_filesystem or not runs_elsewhere(config) or not is_local_file(uri):
        return
    from cnnlab.record.store import redact_uri

    raise ConfigError("tracking.uri", f"{redact_uri(uri)!r} is a file on this machine, which jobs of "
                      f"hydra/launcher={launcher_name(config)} on other machines cannot reach: use an MLflow "
                      "tracking server (http://...) or a database server, or set tracking.shared_filesystem=true "
                      "if every node sees this path")


def cpus_per_job(config: DictConfig) -> int | None:
    """The CPU cores one job of this sweep gets: the launcher's share of a machine (None: unknown, all).

    cnnlab/joblib: the machine's cores over `n_jobs`; Ray: the task's `num_cpus`;
    submitit: `cpus_per_task`.
    """
    launcher = config.hydra.launcher
    name = launcher_name(config)
    if name in ("cnnlab", "joblib"):
        cores = os.cpu_count() or 1
        n_jobs = int(launcher.n_jobs)
        n_jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 is all cores
        return max(1, cores // n_jobs)
    if name == "ray":
        cpus = OmegaConf.select(launcher, "ray.remote.num_cpus")
        return max(1, int(cpus)) if cpus is not None else 1  # Ray's own default for a task
    if name.startswith("submitit"):
        cpus = OmegaConf.select(launcher, "cpus_per_task")
        return int(cpus) if cpus else None
    return None


def job_cpus() -> int | None:
    """In a job: its CPU share ($CNNLAB_JOB_CPUS from the sweep, else SLURM's $SLURM_CPUS_PER_TASK)."""
    for key in (CPUS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def size_thread_pools(cpus: int | None) -> None:
    """Before Keras is imported: TensorFlow's and XLA's (JAX's) CPU thread pools sized to `cpus`.

    TensorFlow's pools are set on its config right after import (`cnnlab.backend`); here the
    variables that the OpenMP runtime and XLA read when they start.
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


def where_tags() -> dict[str, str]:
    """Where a job ran: the host, and on a Ray worker the node's id (`ray list nodes` names it)."""
    tags = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")  # imported only in a process that Ray runs or drives
    if ray is not None and ray.is_initialized():
        tags["ray.node_id"] = ray.get_runtime_context().get_node_id()
    return tags
