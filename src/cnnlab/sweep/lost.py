"""A sweep job whose process died (a killed worker, a lost Ray node, a SLURM job past its time): FAILED, alone.

Any launcher that sees a job's process die calls `job_lost`: the job's child run, found under
`tracking.parent_run_id` by its `hydra.overrides` tag (`cnnlab.record.tracking.job_runs`), is ended
FAILED with the cause in its `error` tag, or a FAILED child is created if the job had not made one;
the launcher gets a result that lets the sweep go on.

Example:
    >>> job_overrides(["init=he", "tracking.parent_run_id=abc", "trainer.seed=2"])
    ['init=he', 'trainer.seed=2']
"""

from __future__ import annotations

import os
import sys

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf


def job_overrides(overrides) -> list[str]:
    """A job's overrides as the job itself records them (the callback's `tracking.parent_run_id` left out)."""
    from cnnlab.config.guard import redact_overrides

    return redact_overrides([o for o in overrides if not o.startswith("tracking.parent_run_id=")])


def job_lost(overrides, cause: str, config: DictConfig) -> JobReturn:
    """Record a job that died with its process (`config`: the job's composed config); the result for Hydra."""
    print(f"error: {' '.join(filter_overrides(job_overrides(overrides)))}: {cause}", file=sys.stderr, flush=True)
    try:
        record_lost_job(config, list(overrides), cause)
    except Exception as e:  # the store is unusable: the summary will miss this job, the sweep goes on
        print(f"error: could not record the lost job in MLflow: {type(e).__name__}: {e}", file=sys.stderr)
    task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    # COMPLETED with no value, as cnnlab.run.job.run_job returns for a failed job: Hydra's sweepers go on
    return JobReturn(overrides=list(overrides), cfg=task_cfg, hydra_cfg=config, working_dir=os.getcwd(),
                     task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED, _return_value=None)


def record_lost_job(config: DictConfig, overrides: list[str], cause: str) -> None:
    """End the job's child run FAILED with `cause`, or create a FAILED child if it has none."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import quick_http
    from cnnlab.record.tracking import Tracker, check_tracking, job_runs, tracking_uri

    tracking = check_tracking(OmegaConf.to_container(config.tracking, resolve=True))
    if not tracking.enabled or not tracking.parent_run_id:
        return
    uri, recorded = tracking_uri(tracking), job_overrides(overrides)
    with quick_http():
        found = job_runs(MlflowClient(tracking_uri=uri), tracking.parent_run_id, recorded)
        if not found:
            name = str(OmegaConf.select(config, "hydra.job.override_dirname") or "") or "lost job"
            Tracker.start(uri, tracking.experiment, name, parent_run_id=tracking.parent_run_id,
                          tags={"hydra.overrides": " ".join(recorded)}).end("FAILED", cause)
        elif found[-1].info.status != "FINISHED":
            Tracker(MlflowClient(tracking_uri=uri), found[-1].info.run_id).end("FAILED", cause)
