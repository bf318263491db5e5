"""Sweeps as one MLflow unit: a Hydra callback that owns the parent run and its summary.

`python run.py -m init=normal,he optimizer.lr=1e-3,1e-2` creates, in the
launcher process and before any job starts, the SQLite store, the
experiment and a parent run; each job becomes a child run
(`mlflow.parentRunId`) named by its swept overrides. When the sweep ends,
the parent gets a table (CSV, Markdown) of every child's overrides, status
and final metrics, and a plot of their validation-accuracy curves.

Jobs learn the parent, the swept keys and their CPU share from `hydra.job.env_set`
overrides added here to the sweep's config (`cnnlab.sweep.cluster.attach_job_context`): each
launcher composes its jobs from that config, so the context reaches jobs on other
processes and machines (Ray, SLURM) as well as the launcher's own workers.
"""

from __future__ import annotations

import atexit
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab import helper_env
from cnnlab.errors import ConfigError
from cnnlab.sweep.cluster import KEYS_ENV, PARENT_ENV

METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss")


def swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: command-line sweep overrides plus `hydra.sweeper.params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return keys + [k for k in params if k not in keys]


def child_name(overrides: list[str], keys: list[str]) -> str | None:
    """'init=he,optimizer.lr=0.01' from a job's overrides, keeping only the swept keys.

    >>> child_name(["+model.layers.conv1.dilation_rate=2", "trainer.steps=5", "init=he"],
    ...            ["+model.layers.conv1.dilation_rate", "init"])
    '+model.layers.conv1.dilation_rate=2,init=he'
    """
    swept = {k.lstrip("+~") for k in keys}  # Hydra keeps a key's `+` in some places and not in others
    picked = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(picked) or None


class MlflowSweepCallback(Callback):
    """Hydra callback (see conf/config.yaml `hydra.callbacks`): the parent run of a multirun.

    The parent always ends in a final state: FINISHED at the sweep's end, KILLED when the
    launcher is interrupted (`finish("KILLED")`), FAILED if the process exits without either
    (e.g. a launcher error), and KILLED by a guard process (`cnnlab.sweep.guard`) if the
    launcher itself is killed.
    """

    def __init__(self) -> None:
        self.tracker = None
        self.guard = None
        self.keys: list[str] = []
        self.uri = self.experiment = None

    def __getstate__(self) -> dict:  # a launcher's workers get a copy: the parent run is not theirs
        return {"tracker": None, "guard": None, "keys": self.keys, "uri": self.uri, "experiment": self.experiment}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global ACTIVE
        from cnnlab.record.tracking import Tracker, check_tracking, tracking_uri
        from cnnlab.sweep.cluster import CPUS_ENV, attach_job_context, check_reachable_store, cpus_per_job

        context = {}  # what every job must know, wherever it runs (cnnlab.sweep.cluster)
        cpus = os.environ.get(CPUS_ENV) or cpus_per_job(config)  # set here: the user's share (0: TF's own)
        if cpus is not None:
            context[CPUS_ENV] = str(cpus)
        # the base config: swept values are applied per job
        tracking = check_tracking(OmegaConf.to_container(config.tracking, resolve=True))
        if not tracking.enabled:
            attach_job_context(config, context)
            return
        from cnnlab.config.guard import redact_overrides, redact_text

        self.keys = keys = swept_keys(config)
        try:
            self.uri, self.experiment = tracking_uri(tracking), tracking.experiment
        except ConfigError as e:  # e.g. tracking=server without $MLFLOW_TRACKING_URI: before any job
            from cnnlab.cli import fail

            fail(str(e))
        command = redact_text(" ".join(["python", *sys.argv]))
        name = "sweep " + time.strftime("%Y-%m-%d %H:%M:%S")
        overrides = [o for o in redact_overrides(config.hydra.overrides.task) if not o.startswith("resume=")]
        resume = OmegaConf.select(config, "resume")
        # creating the store, experiment and parent here, once, keeps parallel jobs off the schema race
        try:
            check_reachable_store(config, self.uri, tracking.shared_filesystem)
            if resume:  # the same sweep again: reopen its parent, skip what FINISHED (cnnlab.sweep.resume)
                from cnnlab.sweep.resume import PLAN_ENV, reopen_parent

                plan = Path(str(config.hydra.sweep.dir)) / "resume_plan.json"
                self.tracker = reopen_parent(self.uri, self.experiment, str(resume), overrides, keys, command, plan)
                context[PLAN_ENV] = str(plan.resolve())
            else:
                self.tracker = Tracker.start(self.uri, self.experiment, name,
                                             tags={"cnnlab.sweep": "parent", "sweep.command": command[:5000]})
        except Exception as e:  # Hydra would only warn and run every job unrecorded: stop here instead
            from cnnlab.cli import fail

            fail(str(e) if isinstance(e, ConfigError) else
                 f"tracking.uri: cannot create the sweep's MLflow run at {redact_text(self.uri)!r}: "
                 f"{redact_text(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        if not resume:  # a reopened parent keeps its params
            self.tracker.log_params({
                "sweep.overrides": " ".join(overrides),
                "sweep.keys": ",".join(keys),
                "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")).rsplit(".", 1)[-1],
            })
        attach_job_context(config, {**context, PARENT_ENV: self.tracker.run_id, KEYS_ENV: ",".join(keys)})
        self.started = time.perf_counter()
        self.guard = start_guard(self.uri, self.tracker.run_id)
        ACTIVE = self
        atexit.register(self.finish, "FAILED", "the sweep stopped before its end")
        print(f"sweep: MLflow parent run {self.tracker.run_id} ({redact_text(self.uri)})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish("FINISHED")

    def finish(self, status: str, note: str | None = None) -> None:
        """End the parent run with `status` and its summary; once (later calls do nothing)."""
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return
        rows, counts = finish_parent(tracker, status, note)
        if self.guard is not None:
            try:
                self.guard.communicate(b"done\n", timeout=10)
            except Exception:
                self.guard.kill()
        print(to_markdown(rows))
        print(f"sweep: {len(rows)} jobs, {counts['FINISHED']} finished, {counts['FAILED']} failed"
              + (f", {counts['KILLED']} killed" if counts["KILLED"] else "")
              + (f"; sweep {status}" if status != "FINISHED" else "")
              + f"; summary in MLflow run {tracker.run_id}")


ACTIVE: MlflowSweepCallback | None = None  # this process's sweep callback, for the launcher to finish


def start_guard(uri: str, run_id: str):
    """A process in its own session that ends the parent KILLED if this one dies before `finish`."""
    env = helper_env()
    try:
        return subprocess.Popen([sys.executable, "-m", "cnnlab.sweep.guard", uri, run_id], stdin=subprocess.PIPE,
                                env=env, start_new_session=True)
    except OSError:
        return None


def finish_parent(tracker, status: str, note: str | None = None) -> tuple[list[dict], dict]:
    """Summary (CSV, Markdown, plot) of the children that exist, job counts, then the parent's end.

    Unless the sweep FINISHED, children still RUNNING are ended KILLED first (their workers are gone).
    """
    client, run_id = tracker.client, tracker.run_id
    if status != "FINISHED":
        for row in summarize_children(client, run_id):
            if row["status"] == "RUNNING":
                client.set_tag(row["run_id"], "error", note or f"sweep {status}")
                client.set_terminated(row["run_id"], "KILLED")
    parent = client.get_run(run_id)
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
        comparison_plot(client, rows, folder / "val_accuracy.png")
        tracker.log_artifacts(folder)
    tags = {f"jobs.{s.lower()}": str(n) for s, n in counts.items()} | {"jobs.total": str(len(rows))}
    tracker.set_tags(tags | ({"error": note} if note else {}))
    started = parent.info.start_time / 1000
    tracker.log_metrics(resumes, {"jobs_finished": counts["FINISHED"], "jobs_failed": counts["FAILED"],  # a step
                                  "sweep_seconds": time.time() - started})  # per attempt
    tracker.end(status)
    return rows, counts


def summarize_children(client, parent_id: str) -> list[dict]:
    """One row per child run, in job order: name, overrides, status and final metrics."""
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=10000)
    rows = []
    for run in children:
        row = {"run": run.info.run_name, "overrides": run.data.tags.get("hydra.overrides", ""),
               "status": run.info.status, "run_id": run.info.run_id}
        row.update({m: run.data.metrics.get(m) for m in METRICS})
        row["note"] = run.data.tags.get("error") or (
            f"diverged at step {run.data.tags['diverged_at_step']}" if "diverged_at_step" in run.data.tags else "")
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
