"""`python run.py -m <same overrides> resume=<parent_run_id>|last`: a sweep finishes only what is missing.

The sweep callback (`cnnlab.sweep.callback`) reopens the parent run (`reopen_parent`) after checking
that this command runs the same grid (`grid_differences`), and writes a plan: for each job
that already has a child run (matched by its `hydra.overrides` tag, `resume=` left out; the
newest when several), that child's id, status and `val_accuracy`. Each job reads the plan
(`job_plan`, in `train`): a FINISHED child is skipped (not re-run; the job returns its
stored `val_accuracy`), a KILLED/FAILED child with a checkpoint is resumed in the same run
(the single-run path, `cnnlab.run.resume`), anything else runs as a new child.

`resume=last` picks the newest KILLED or FAILED sweep parent of the experiment with these
overrides. `resume=<id>` takes any parent that is not RUNNING (a FINISHED sweep with FAILED
jobs re-runs them); a RUNNING one may still have its launcher somewhere and is refused.

Example:
    >>> job_key(["trainer.seed=2", "resume=last", "init=he"])
    'init=he trainer.seed=2'
    >>> grid_differences("init=he,glorot trainer.seed=1,2", ["init=he,glorot", "trainer.seed=1,2,3"])
    ['trainer.seed (1,2 -> 1,2,3)']
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cnnlab.errors import ConfigError

PLAN_ENV = "CNNLAB_SWEEP_RESUME_PLAN"  # the plan file's path, for the jobs
PARENT_TAG = "cnnlab.sweep"  # "parent" on a sweep's parent run
RESUMES_TAG = "sweep.resumes"  # how many times the parent was reopened


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _kept(override: str) -> bool:
    from cnnlab.run.resume import IGNORED

    key = _key(override)
    return key not in IGNORED and not key.startswith("tracking.")  # what cannot change what a job trains


def job_key(overrides) -> str:
    """A job's identity across attempts: its overrides (a list, or the `hydra.overrides` tag), sorted, no `resume`."""
    if isinstance(overrides, str):
        overrides = overrides.split(" ")
    return " ".join(sorted(o for o in overrides if o and _key(o) != "resume"))


def grid_differences(logged: str, overrides: list[str]) -> list[str]:
    """How `overrides` (this command's) differ from a parent's `sweep.overrides` param, as 'key (old -> new)'."""
    old = {_key(o): o.split("=", 1)[-1] for o in logged.split(" ") if o and _kept(o)}
    new = {_key(o): o.split("=", 1)[-1] for o in overrides if o and _kept(o)}
    return [f"{k} ({old.get(k, 'unset')} -> {new.get(k, 'unset')})"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def find_parent(client, experiment: str, resume: str, overrides: list[str], keys: list[str]):
    """The sweep parent run to reopen (an MLflow Run); ConfigError naming why there is none."""
    def differs(run) -> list[str]:
        found = grid_differences(run.data.params.get("sweep.overrides", ""), overrides)
        logged_keys = run.data.params.get("sweep.keys", "")
        if logged_keys.split(",") != list(keys) and not found:
            found.append(f"sweep.keys ({logged_keys} -> {','.join(keys)})")
        return found

    if resume == "last":
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'parent'",
                                  order_by=["attributes.start_time DESC"], max_results=1000) if found else []
        for run in runs:
            if run.info.status in ("KILLED", "FAILED") and not differs(run):
                return run
        raise ConfigError("resume", f"last: no KILLED or FAILED sweep of experiment {experiment!r} ran these "
                                    "overrides (resume=<parent_run_id> names one)")
    try:
        run = client.get_run(resume)
    except Exception:
        raise ConfigError("resume", f"no MLflow run {resume!r} in this store") from None
    if run.data.tags.get(PARENT_TAG) != "parent":
        raise ConfigError("resume", f"run {resume} is not a sweep's parent run: resume a single run without -m")
    if run.info.status == "RUNNING":
        raise ConfigError("resume", f"sweep {resume} is still RUNNING (its launcher may be alive; a killed "
                                    "sweep's guard ends it KILLED within a minute)")
    found = differs(run)
    if found:
        raise ConfigError("resume", f"sweep {resume} ran a different grid: {', '.join(found)}; "
                                    "resume it with its own overrides")
    return run


def plan(client, parent_id: str) -> dict[str, dict]:
    """job key → {"run_id", "status", "val_accuracy"} of the newest child run of each job so far."""
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=10000)
    out = {}
    for run in children:  # a child killed before its tags were set has no overrides: its job runs anew
        if "hydra.overrides" in run.data.tags:
            out[job_key(run.data.tags["hydra.overrides"])] = {
                "run_id": run.info.run_id, "status": run.info.status,
                "val_accuracy": run.data.metrics.get("val_accuracy")}
    return out


def reopen_parent(uri: str, experiment: str, resume: str, overrides: list[str], keys: list[str],
                  command: str, plan_path: Path):
    """Find and reopen the parent (RUNNING again), write the jobs' plan to `plan_path`; a `Tracker`."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import open_store
    from cnnlab.record.tracking import Tracker

    with open_store(uri):
        client = MlflowClient(tracking_uri=uri)
        run = find_parent(client, experiment, resume, overrides, keys)
        run_id = run.info.run_id
        jobs = plan(client, run_id)
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(jobs, indent=1))
        client.update_run(run_id, status="RUNNING")
        if "error" in run.data.tags:
            client.delete_tag(run_id, "error")  # the previous attempt's; this one sets its own
        tracker = Tracker(client, run_id)
        tracker.set_tags({RESUMES_TAG: str(int(run.data.tags.get(RESUMES_TAG, 0)) + 1),
                          "sweep.resume_command": command[:5000]})
    done = sum(j["status"] == "FINISHED" for j in jobs.values())
    print(f"sweep: resuming MLflow parent run {run_id}: {done} jobs FINISHED (skipped), "
          f"{len(jobs) - done} to resume or re-run, the rest new")
    return tracker


def job_plan(run, overrides: list[str]) -> tuple[dict | None, object]:
    """In a resumed sweep's job: (the stored result, if its child FINISHED; else None) and `run` with
    `resume` set to the child to continue (a KILLED/FAILED one with a checkpoint) or None (a new child)."""
    from cnnlab.record.tracking import tracking_uri
    from cnnlab.run.checkpoints import checkpoint_root, latest

    path = os.environ.get(PLAN_ENV)
    if not path:
        raise ConfigError("resume", "this sweep job has no resume plan (resume a sweep with -m and tracking on)")
    entry = json.loads(Path(path).read_text()).get(job_key(overrides))
    if entry and entry["status"] == "FINISHED":
        return {"val_accuracy": entry["val_accuracy"], "run_id": entry["run_id"], "skipped": True}, run
    root = checkpoint_root(run.trainer, tracking_uri(run.tracking))
    child = entry["run_id"] if entry and entry["status"] in ("KILLED", "FAILED") \
        and latest(root / entry["run_id"]) else None
    return None, dataclasses.replace(run, resume=child)


def newest_per_name(rows: list[dict]) -> list[dict]:
    """One summary row per job of a resumed sweep: the newest child of each name, at the first one's place."""
    out: dict[str, dict] = {}
    for row in rows:  # in start order: a later child of the same name replaces the earlier
        out[row["run"]] = row
    return list(out.values())
