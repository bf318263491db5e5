"""What a sweep job needs wherever it runs: a store it can reach, and its share of the machine's cores.

Hydra's launchers (cnnlab, joblib, Ray, submitit) all build each job's config with
`config_loader.load_sweep_config(master_config, job_overrides)`, which composes it again
from `hydra.overrides.hydra` plus the job's overrides, and `run_job` applies the job
config's `hydra.job.env_set` inside the job's process. So the sweep's callback gives each job
its CPU share (`CNNLAB_JOB_CPUS`, read by `cnnlab.threads`) as a `hydra.job.env_set` override:
it travels with the job's config to another process, Ray node or SLURM node.

Example:
    >>> env_set_override("CNNLAB_JOB_CPUS", "2")
    "++hydra.job.env_set.CNNLAB_JOB_CPUS='2'"
    >>> is_local_file("sqlite:////tmp/x/mlflow.db"), is_local_file("http://127.0.0.1:5000")
    (True, False)
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.errors import ConfigError


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
