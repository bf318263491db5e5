"""Sweeps as one MLflow unit: a Hydra callback that owns the parent run and its summary.

`python run.py -m init=normal,he optimizer.lr=1e-3,1e-2` creates, in the
launcher process and before any job starts, the SQLite store, the
experiment and a parent run; each job becomes a child run
(`mlflow.parentRunId`) named by its swept overrides. When the sweep ends,
the parent gets a table (CSV, Markdown) of every child's overrides, status
and final metrics, and a plot of their validation-accuracy curves.

Jobs learn what they need from their own config, whichever launcher composes it, in whatever
process or machine: the callback adds `tracking.parent_run_id=<id>` to the sweep's task overrides
(every job's config gets it), names each job's run by Hydra's own `hydra.job.override_dirname`
with the keys the sweep does not vary excluded, and gives each job its CPU share in
`hydra.job.env_set` (`cnnlab.sweep.cluster.attach_job_context`).

The parent's final status is written here only (`finish`): FINISHED at the sweep's end, KILLED if
the sweep stopped on Ctrl-C or SIGTERM, FAILED if it stopped on an error of its own. A launcher
killed outright (SIGKILL) cannot: its parent is ended KILLED by the next command that opens the
store (`cnnlab.record.liveness`).
"""

from __future__ import annotations

import atexit
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.errors import ConfigError, Interrupted

METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss")
PARENT_KEY = "tracking.parent_run_id"


def swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: command-line sweep overrides plus `hydra.sweeper.params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return keys + [k for k in params if k not in keys]


def unswept_keys(config: DictConfig, swept: list[str]) -> list[str]:
    """The task override keys the sweep does not vary (left out of the jobs' run names), and the callback's own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    bare = {k.lstrip("+~") for k in swept}
    # an Optuna sweeper's per-job keys (cnnlab.sweep.study) are tags of the run, not part of its name
    trial_keys = {"optuna.trial", "optuna.study", "optuna.storage"}
    return sorted({o.key_or_group for o in parsed if o.key_or_group not in bare} | {PARENT_KEY, "resume"} | trial_keys)


def name_jobs_by(config: DictConfig, swept: list[str], parent_run_id: str | None) -> None:
    """Every job of this sweep gets `tracking.parent_run_id` in its config and a `hydra.job.override_dirname`
    of its swept overrides only (its run's name)."""
    exclude = ",".join(f"'{k}'" for k in unswept_keys(config, swept))
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]")
        if parent_run_id:
            config.hydra.overrides.task.append(f"{PARENT_KEY}={parent_run_id}")


def check_study(config: DictConfig) -> None:
    """With hydra/sweeper=cnnlab_optuna: its settings checked, and no dry run (its trials would count as failed)."""
    if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith(".CnnlabOptunaSweeper"):
        return
    from cnnlab.cli import fail
    from cnnlab.sweep.study import check_sweeper

    try:
        settings = {k: v for k, v in config.hydra.sweeper.items_ex(resolve=False) if k != "_target_"}
        check_sweeper(settings)
        if OmegaConf.select(config, "dry_run"):
            raise ConfigError("dry_run", "true: an Optuna study's trials must train (check its config with "
                                         "a single run: python run.py <overrides> dry_run=true)")
    except ConfigError as e:
        fail(str(e))


class MlflowSweepCallback(Callback):
    """Hydra callback (see conf/config.yaml `hydra.callbacks`): the parent run of a multirun."""

    def __init__(self) -> None:
        self.tracker = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab.record.tracking import Tracker, check_tracking, tracking_uri
        from cnnlab.sweep.cluster import attach_job_context, check_reachable_store, cpus_per_job
        from cnnlab.threads import CPUS_ENV

        cpus = os.environ.get(CPUS_ENV) or cpus_per_job(config)  # set here: the user's share (0: the backends' own)
        if cpus is not None:
            attach_job_context(config, {CPUS_ENV: str(cpus)})
        keys = swept_keys(config)
        check_study(config)  # an Optuna study's settings: one line before any MLflow run exists
        # the base config: swept values are applied per job
        tracking = check_tracking(OmegaConf.to_container(config.tracking, resolve=True))
        if not tracking.enabled:
            name_jobs_by(config, keys, None)
            return
        from cnnlab.cli import fail
        from cnnlab.config.guard import redact_overrides, redact_text

        try:
            uri, experiment = tracking_uri(tracking), tracking.experiment
        except ConfigError as e:  # e.g. tracking=server without $MLFLOW_TRACKING_URI: before any job
            fail(str(e))
        command = redact_text(" ".join(["python", *sys.argv]))
        overrides = [o for o in redact_overrides(config.hydra.overrides.task) if not o.startswith("resume=")]
        resume = OmegaConf.select(config, "resume")
        # creating the store, experiment and parent here, once, keeps parallel jobs off the schema race
        try:
            check_reachable_store(config, uri, tracking.shared_filesystem)
            if resume:  # the same sweep again: reopen its parent; each job skips what FINISHED (cnnlab.sweep.resume)
                from cnnlab.sweep.resume import reopen_parent

                self.tracker = reopen_parent(uri, experiment, str(resume), overrides, keys, command)
            else:
                self.tracker = Tracker.start(uri, experiment, "sweep " + time.strftime("%Y-%m-%d %H:%M:%S"),
                                             tags={"cnnlab.sweep": "parent", "sweep.command": command[:5000]})
                self.tracker.log_params({
                    "sweep.overrides": " ".join(overrides),
                    "sweep.keys": ",".join(keys),
                    "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")).rsplit(".", 1)[-1],
                })
        except Exception as e:  # Hydra would only warn and run every job unrecorded: stop here instead
            fail(str(e) if isinstance(e, ConfigError) else
                 f"tracking.uri: cannot create the sweep's MLflow run at {redact_text(uri)!r}: "
                 f"{redact_text(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        name_jobs_by(config, keys, self.tracker.run_id)
        atexit.register(self.finish_at_exit)
        print(f"sweep: MLflow parent run {self.tracker.run_id} ({redact_text(uri)})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish("FINISHED")

    def finish_at_exit(self) -> None:
        """The sweep did not reach its end: Ctrl-C/SIGTERM (KILLED) or an error of the launcher's (FAILED)."""
        signum = Interrupted.last
        if signum is not None:
            import signal

            self.finish("KILLED", f"sweep interrupted by {signal.Signals(signum).name}")
        else:
            self.finish("FAILED", "the sweep stopped before its end")

    def finish(self, status: str, note: str | None = None) -> None:
        """End the parent run with `status` and its summary; once (later calls do nothing)."""
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return
        rows, counts = finish_parent(tracker, status, note)
        print(to_markdown(rows))
        from cnnlab.stats import seed_report

        seeds = seed_report(rows)
        if seeds:
            print(seeds)
        print(f"sweep: {len(rows)} jobs, {counts['FINISHED']} finished, {counts['FAILED']} failed"
              + (f", {counts['KILLED']} killed" if counts["KILLED"] else "")
              + (f"; sweep {status}" if status != "FINISHED" else "")
              + f"; summary in MLflow run {tracker.run_id}")


def finish_parent(tracker, status: str, note: str | None = None) -> tuple[list[dict], dict]:
    """Summary (CSV, Markdown, plot) of the children that exist, job counts, then the parent's end.

    Children whose process on this host is gone are ended KILLED first; unless the sweep FINISHED, so
    is every child still RUNNING (its worker was stopped, or its node is out of reach).
    """
    from cnnlab.record.tracking import Tracker, end_dead_runs
    from cnnlab.stats import seed_report

    client, run_id = tracker.client, tracker.run_id
    parent = client.get_run(run_id)
    end_dead_runs(client, [parent.info.experiment_id], parent_run_id=run_id)
    if status != "FINISHED":
        for row in summarize_children(client, run_id):
            if row["status"] == "RUNNING":
                Tracker(client, row["run_id"]).end("KILLED", note or f"sweep {status}")
    resumes = int(parent.data.tags.get("sweep.resumes", 0))
    rows = summarize_children(client, run_id)
    if resumes:  # a job re-run after a resume has two children: the newest one counts
        from cnnlab.sweep.resume import newest_per_name

        rows = newest_per_name(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "summary.csv").write_text(to_csv(rows))
        (folder / "summary.md").write_text(to_markdown(rows) + "\n")
        seeds = seed_report(rows)  # a sweep over trainer.seed: each cell's mean and 95% interval
        if seeds:
            (folder / "seeds.md").write_text(seeds + "\n")
        comparison_plot(client, rows, folder / "val_accuracy.png")
        tracker.log_artifacts(folder)
    tracker.set_tags({f"jobs.{s.lower()}": str(n) for s, n in counts.items()} | {"jobs.total": str(len(rows))})
    started = parent.info.start_time / 1000
    tracker.log_metrics(resumes, {"jobs_finished": counts["FINISHED"], "jobs_failed": counts["FAILED"],  # a step
                                  "sweep_seconds": time.time() - started})  # per attempt
    tracker.end(status, note)
    return rows, counts


def summarize_children(client, parent_id: str) -> list[dict]:
    """One row per child run, in job order: name, overrides, status and final metrics."""
    from cnnlab.record.tracking import child_runs

    rows = []
    for run in child_runs(client, parent_id):
        row = {"run": run.info.run_name, "overrides": run.data.tags.get("hydra.overrides", ""),
               "status": run.info.status, "run_id": run.info.run_id}
        row.update({m: run.data.metrics.get(m) for m in METRICS})
        row["note"] = run.data.tags.get("error") or (
            f"diverged at step {run.data.tags['diverged_at_step']}" if "diverged_at_step" in run.data.tags else
            f"pruned at step {run.data.tags['pruned_at_step']}" if "pruned_at_step" in run.data.tags else "")
        if "optuna.trial" in run.data.tags:
            row["trial"] = int(run.data.tags["optuna.trial"])
        rows.append(row)
    return rows


COLUMNS = ("run", "status", *METRICS, "note", "overrides", "run_id")


def _cell(value) -> str:
    """'0.9123', '1.5e+26' (a diverged loss): short either way.

    >>> _cell(0.91234), _cell(1.5e26), _cell(None)
    ('0.9123', '1.5e+26', '')
    """
    if not isinstance(value, float):
        return "" if value is None else str(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    return out.getvalue()


def to_markdown(rows: list[dict]) -> str:
    columns = COLUMNS[:-2]  # overrides and run ids are in the CSV
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def comparison_plot(client, rows: list[dict], path: Path) -> None:
    """Validation accuracy against steps, one line per job."""
    from cnnlab.record.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        history = sorted(client.get_metric_history(r["run_id"], "val_accuracy"), key=lambda m: m.step)
        if history:
            ax.plot([m.step for m in history], [m.value for m in history], "-o", markersize=3,
                    label=f"{r['run']} ({r['status'].lower()})")
    ax.set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1), title="sweep: validation accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
