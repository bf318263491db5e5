"""`hydra/launcher=ray` and `hydra/launcher=submitit_*`: Hydra's Ray and submitit launchers, one job lost at a time.

The plugins' own `launch` gathers results with `ray.get` / `job.results()`, and the first
job whose process died (a killed Ray worker, a SLURM job past its time, the OOM killer)
raises there and ends the whole sweep. Here every job is awaited on its own: a lost
one is recorded as a FAILED child run with the cause (`cnnlab.sweep.lost`) and the sweep
goes on, as with `hydra/launcher=cnnlab`. Ctrl-C cancels the jobs still out and ends the
sweep KILLED. Only public APIs: Ray's `ray.init`/`ray.remote`, submitit's executor, Hydra's
`run_job` and the submitit plugin's own job function (its launcher's `__call__`).

Examples:
    python run.py -m init=he,glorot hydra/launcher=ray hydra.launcher.ray.init.address=10.0.0.5:6379
    python run.py -m init=he,glorot hydra/launcher=submitit_slurm hydra.launcher.partition=gpu
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from omegaconf import OmegaConf

from cnnlab.sweep.launcher import compose_job
from cnnlab.sweep.lost import job_lost

log = logging.getLogger(__name__)


def _start(launcher, job_overrides, kind: str) -> Path:
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"{kind} launcher: {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
    return sweep_dir


def run_on_ray(hydra_context, job_config, task_function, singleton_state) -> JobReturn:
    """One job inside a Ray task, as Hydra's launchers run a job in their worker processes."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job

    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(job_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=job_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def launch_ray(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Each job a Ray task (`hydra.launcher.ray.remote`: num_cpus, num_gpus, max_retries)."""
    import ray

    _start(launcher, job_overrides, "Ray")
    if not ray.is_initialized():
        ray.init(**OmegaConf.to_container(launcher.ray_cfg.init, resolve=True))
    remote = ray.remote(**OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True))(run_on_ray)
    out = []
    for i, overrides in enumerate(job_overrides):
        index = initial_job_idx + i
        log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
        config = compose_job(launcher.hydra_context, launcher.config, list(overrides), index)
        ref = remote.remote(launcher.hydra_context, config, launcher.task_function, Singleton.get_state())
        out.append((list(overrides), config, ref))
    results = []
    try:
        for overrides, config, ref in out:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as e:  # the job's process or node died: it alone fails
                results.append(job_lost(overrides, f"Ray task lost: {type(e).__name__}: {first_line(e)}", config))
    except KeyboardInterrupt:  # the sweep's callback ends the parent KILLED as the process exits
        for *_, ref in out:
            ray.cancel(ref, force=True)
        raise
    return results


def launch_submitit(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The jobs as one submitit job array (SLURM, or local processes), as the submitit plugin submits them."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind, params = launcher.kind, dict(launcher.params)
    _start(launcher, job_overrides, f"submitit {kind}")
    folder = params.pop("submitit_folder")
    extra = {f"{kind}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **extra)
    common = set(OmegaConf.structured(BaseQueueConf).keys())  # the rest are this executor's own keys
    executor.update_parameters(**{k if k in common else f"{kind}_{k}": v for k, v in params.items()})
    indices = [initial_job_idx + i for i in range(len(job_overrides))]
    for index, overrides in zip(indices, job_overrides):
        log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
    state = Singleton.get_state()
    jobs = executor.map_array(launcher, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(indices),
                              indices, [f"job_id_for_{i}" for i in indices], [state] * len(indices))
    results = []
    try:
        for index, overrides, job in zip(indices, job_overrides, jobs):
            try:
                results.append(job.results()[0])
            except Exception as e:  # FailedJobError, UncompletedJobError: its process died or timed out
                cause = f"submitit job {job.job_id} lost: {type(e).__name__}: {first_line(e)}"
                config = compose_job(launcher.hydra_context, launcher.config, list(overrides), index)
                results.append(job_lost(list(overrides), cause, config))
    except KeyboardInterrupt:  # the sweep's callback ends the parent KILLED as the process exits
        for job in jobs:
            job.cancel(check=False)
        raise
    return results


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (Ray's and submitit's run to pages)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
