"""`python run.py -m <same overrides> resume=<parent_run_id>|last`: a sweep finishes only what is missing.

The sweep callback (`cnnlab.sweep.callback`) reopens the parent run (`reopen_parent`) after checking
that this command runs the same grid (`grid_differences`). Each job then looks up its own newest
child under that parent (by its `hydra.overrides` tag, `resume=` left out: `cnnlab.run.resume.sweep_job_plan`):
a FINISHED child is skipped (not re-run; the job returns its stored `val_accuracy`), a KILLED/FAILED
child with a checkpoint is resumed in the same run (the single-run path), anything else runs as a new child.

`resume=last` picks the newest KILLED or FAILED sweep parent of the experiment with these
overrides. `resume=<id>` takes any parent that is not RUNNING (a FINISHED sweep with FAILED
jobs re-runs them); a RUNNING one may still have its launcher somewhere and is refused.

Example:
    >>> grid_differences("init=he,glorot trainer.seed=1,2", ["init=he,glorot", "trainer.seed=1,2,3"])
    ['trainer.seed (1,2 -> 1,2,3)']
"""

from __future__ import annotations

from cnnlab.errors import ConfigError

PARENT_TAG = "cnnlab.sweep"  # "parent" on a sweep's parent run
RESUMES_TAG = "sweep.resumes"  # how many times the parent was reopened


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _kept(override: str) -> bool:
    from cnnlab.run.resume import IGNORED  # (sweep/ sits above run/)

    key = _key(override)
    return key not in IGNORED and not key.startswith("tracking.")  # what cannot change what a job trains


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
        from cnnlab.record.liveness import owner_alive

        if owner_alive(run.data.tags):
            raise ConfigError("resume", f"sweep {resume} is still RUNNING (its launcher process "
                                        f"{run.data.tags.get('process.pid', '?')} on "
                                        f"{run.data.tags.get('host', '?')} may be alive)")
    found = differs(run)
    if found:
        raise ConfigError("resume", f"sweep {resume} ran a different grid: {', '.join(found)}; "
                                    "resume it with its own overrides")
    return run


def reopen_parent(uri: str, experiment: str, resume: str, overrides: list[str], keys: list[str], command: str):
    """Find and reopen the parent (RUNNING again, owned by this process); a `Tracker`."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.liveness import process_tags
    from cnnlab.record.store import open_store
    from cnnlab.record.tracking import Tracker, child_runs, end_dead_runs, job_key

    with open_store(uri):
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found:  # a sweep whose launcher was killed outright is KILLED now, and can be resumed
            end_dead_runs(client, [found.experiment_id])
        run = find_parent(client, experiment, resume, overrides, keys)
        run_id = run.info.run_id
        jobs = {job_key(r.data.tags.get("hydra.overrides", "")): r.info.status for r in child_runs(client, run_id)}
        client.update_run(run_id, status="RUNNING")
        if "error" in run.data.tags:
            client.delete_tag(run_id, "error")  # the previous attempt's; this one sets its own
        tracker = Tracker(client, run_id)
        tracker.set_tags({RESUMES_TAG: str(int(run.data.tags.get(RESUMES_TAG, 0)) + 1),
                          "sweep.resume_command": command[:5000], **process_tags()})
    done = sum(status == "FINISHED" for status in jobs.values())
    print(f"sweep: resuming MLflow parent run {run_id}: {done} jobs FINISHED (skipped), "
          f"{len(jobs) - done} to resume or re-run, the rest new")
    return tracker


def newest_per_name(rows: list[dict]) -> list[dict]:
    """One summary row per job of a resumed sweep: the newest child of each name, at the first one's place."""
    out: dict[str, dict] = {}
    for row in rows:  # in start order: a later child of the same name replaces the earlier
        out[row["run"]] = row
    return list(out.values())
