"""`resume=<run_id>` / `resume=last`: which MLflow run to continue, and whether this config may continue it.

The run's logged params are its config (`tracking.flatten`). A resume must match
them except for keys that do not change what is trained: `IGNORED` (and any
`tracking.*`), and the budget (`trainer.steps`, `trainer.epochs`), which may grow.
`find_run` is handed to the recorder, which calls it with its MLflow client (`Tracker.resume`).

Example:
    >>> differences({"optimizer.lr": "0.01", "trainer.steps": "300"},
    ...             {"optimizer.lr": "0.1", "trainer.steps": "600", "resume": "abc"})
    ['optimizer.lr (0.01 -> 0.1)']
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import ConfigError

# trainer.devices: the global batch and its order do not depend on it (a run may resume on other devices)
IGNORED = {"resume", "dry_run", "trainer.verbose", "trainer.log_every", "trainer.checkpoint_every",
           "trainer.checkpoint_dir", "trainer.keep_best", "trainer.devices"}
BUDGET = ("trainer.steps", "trainer.epochs")  # may grow, not shrink
RESUMABLE = ("KILLED", "FAILED")


def _number(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def differences(logged: dict[str, str], params: dict[str, str]) -> list[str]:
    """The keys on which `params` (this config) differs from a run's `logged` params, as 'key (old -> new)'."""
    out = []
    for key in sorted(set(logged) | set(params)):
        if key in IGNORED or key.startswith("tracking."):
            continue
        old, new = logged.get(key), None if key not in params else params[key][:6000]  # MLflow keeps 6000
        if old == new:
            continue
        if key in BUDGET and None not in (_number(old), _number(new)) and _number(new) >= _number(old):
            continue
        out.append(f"{key} ({old if old is not None else 'unset'} -> {new if new is not None else 'unset'})")
    return out


def check_differences(run_id: str, logged: dict, params: dict) -> None:
    found = differences(logged, params)
    if found:
        raise ConfigError("resume", f"run {run_id} was trained with a different config: {', '.join(found)}; "
                                    "resume it with its own overrides (only trainer.steps/epochs may grow)")


def find_run(client, experiment: str, run_id: str, params: dict, checkpoints: str):
    """The run to continue (an MLflow Run): `run_id`, or for "last" the newest KILLED/FAILED run of
    `experiment` with this config and a checkpoint in `checkpoints`. ConfigError if there is none."""
    from cnnlab.run.checkpoints import latest

    if run_id != "last":
        try:
            run = client.get_run(run_id)
        except Exception:
            raise ConfigError("resume", f"no MLflow run {run_id!r} in this store") from None
        if run.info.status not in RESUMABLE:
            raise ConfigError("resume", f"run {run_id} is {run.info.status}: only a KILLED or FAILED run resumes")
        check_differences(run_id, run.data.params, params)
        return run
    found = client.get_experiment_by_name(experiment)
    # (MLflow's search takes no IN or OR on status: filtered here)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=1000) if found else []
    for run in runs:
        if run.info.status in RESUMABLE and latest(Path(checkpoints) / run.info.run_id) \
                and not differences(run.data.params, params):
            return run
    raise ConfigError("resume", f"last: no KILLED or FAILED run of experiment {experiment!r} with this config "
                                f"has a checkpoint in {checkpoints}")


def sweep_job_plan(run, parent_run_id: str, overrides: list[str]) -> tuple[dict | None, object]:
    """In a job of a resumed sweep: (its stored result, if its newest child FINISHED; else None) and `run` with
    `resume` set to the child to continue (a KILLED/FAILED one with a checkpoint) or None (a new child)."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import open_store
    from cnnlab.record.tracking import job_runs, tracking_uri
    from cnnlab.run.checkpoints import checkpoint_root, latest

    uri = tracking_uri(run.tracking)
    with open_store(uri):
        found = job_runs(MlflowClient(tracking_uri=uri), parent_run_id, overrides)
    child = found[-1] if found else None
    if child and child.info.status == "FINISHED":
        return {"val_accuracy": child.data.metrics.get("val_accuracy"), "run_id": child.info.run_id,
                "skipped": True}, run
    root = checkpoint_root(run.trainer, uri)
    again = child.info.run_id if child and child.info.status in RESUMABLE and latest(root / child.info.run_id) \
        else None
    return None, dataclasses.replace(run, resume=again)
