"""Resuming a sweep for real: a 4-job sweep SIGKILLed after ~2 jobs, then `-m <same overrides> resume=<parent>`.

The first resume (`resume=last`) is SIGKILLed too; the second must reuse the parent, leave the FINISHED
children untouched (same run ids and start times), resume the interrupted child in its own run when it had
a checkpoint, run what is missing, and write one summary row per job. A different grid is refused in one line, exit 2.
Every wait is bounded; the test kills only the process group it started.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from cnnlab.record.tracking import job_key
from cnnlab.sweep.resume import grid_differences, newest_per_name

# 4 jobs, one after another (one worker), a few seconds each, deterministic
GRID = ["-m", "model=tiny", "dataset=synthetic", "trainer.seed=1,2,3,4", "trainer.steps=300",
        "trainer.eval_every=50", "trainer.deterministic=true", "trainer.verbose=0", "hydra.launcher.n_jobs=1"]


def query(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db, timeout=10) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return []  # not created yet


def children(db: Path) -> list[tuple]:
    """(run id, name, status, start_time, parent id) of every child run, in start order."""
    return query(db, "SELECT r.run_uuid, r.name, r.status, r.start_time, t.value FROM runs r JOIN tags t "
                     "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' ORDER BY r.start_time")


def parents(db: Path) -> list[tuple]:
    return query(db, "SELECT r.run_uuid, r.status FROM runs r WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE "
                     "t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId')")


def kill_after(tmp: Path, finished: int, *extra: str, attempt: str = "first", timeout: float = 400) -> None:
    """Start the sweep; SIGKILL its process group once `finished` children FINISHED and the next has a checkpoint."""
    db = tmp / "mlflow.db"
    args = [sys.executable, "run.py", *GRID, f"tracking.uri=sqlite:///{db}", f"hydra.sweep.dir={tmp}/{attempt}", *extra]
    with open(tmp / f"{attempt}.err", "w") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            runs = children(db)
            done = [r for r in runs if r[2] == "FINISHED"]
            running = [r for r in runs if r[2] == "RUNNING"]
            if len(done) >= finished and (any((tmp / "checkpoints" / r[0] / "latest.json").exists() for r in running)
                                          or len(done) > finished):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before the kill: {(tmp / f'{attempt}.err').read_text()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher; its worker stops its job when it sees it gone
        proc.wait(timeout=30)
    # the worker ends its job's run KILLED (bounded); the parent waits for the next command (cnnlab.record.liveness)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(c[2] == "RUNNING" for c in children(db)):
        time.sleep(0.5)
    assert not any(c[2] == "RUNNING" for c in children(db)), children(db)


def summary_rows(uri: str, parent_id: str, dst: Path) -> list[dict]:
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=parent_id, artifact_path="summary.csv", tracking_uri=uri, dst_path=str(dst))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def test_helpers():
    assert job_key("trainer.seed=2 resume=abc model=tiny") == job_key(["model=tiny", "trainer.seed=2"])
    assert grid_differences("init=he,glorot trainer.verbose=0", ["init=he,glorot", "trainer.verbose=2"]) == []
    assert grid_differences("init=he,glorot", ["init=he"]) == ["init (he,glorot -> he)"]
    assert grid_differences("a=1", ["b=2"]) == ["a (1 -> unset)", "b (unset -> 2)"]
    rows = [{"run": "s=1", "status": "KILLED"}, {"run": "s=2", "status": "FINISHED"},
            {"run": "s=1", "status": "FINISHED"}]
    assert newest_per_name(rows) == [{"run": "s=1", "status": "FINISHED"}, {"run": "s=2", "status": "FINISHED"}]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_sweep_resumes(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    kill_after(tmp_path, finished=2)
    ((parent_id, status),) = parents(db)
    assert status == "RUNNING"  # its launcher is gone: the next command that opens the store ends it
    before = {r[1]: r for r in children(db)}
    finished = {name: r for name, r in before.items() if r[2] == "FINISHED"}
    resumable = {name: r for name, r in before.items()
                 if r[2] in ("KILLED", "FAILED") and (tmp_path / "checkpoints" / r[0] / "latest.json").exists()}
    assert 2 <= len(finished) < 4, before

    # resume=last ends that parent KILLED (its launcher died) and reopens it; killed in turn
    kill_after(tmp_path, 3, "resume=last", attempt="second")
    assert parents(db) == [(parent_id, "RUNNING")]

    out = run_cli(*GRID, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/again", f"resume={parent_id}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming MLflow parent run {parent_id}" in out.stdout
    assert parents(db) == [(parent_id, "FINISHED")]  # the same parent, ended again
    after = children(db)
    newest = {r[1]: r for r in after}  # per job name, the newest child
    assert sorted(newest) == [f"trainer.seed={s}" for s in (1, 2, 3, 4)]
    assert all(r[2] == "FINISHED" and r[4] == parent_id for r in newest.values()), after
    for name, r in finished.items():  # not re-run: the same run, the same start time, no second child
        assert newest[name][:4] == r[:4] and sum(a[1] == name for a in after) == 1
    for name, r in resumable.items():  # continued in its own run
        assert newest[name][0] == r[0], (name, after)
        tags = dict(query(db, f"SELECT key, value FROM tags WHERE run_uuid = '{r[0]}'"))
        assert int(tags["resumed_from_step"]) >= 50
        steps = [s for (s,) in query(db, f"SELECT step FROM metrics WHERE run_uuid = '{r[0]}' AND key = 'val_loss'")]
        assert sorted(steps) == [50, 100, 150, 200, 250, 300]  # every evaluation once
    rows = summary_rows(uri, parent_id, tmp_path / "summary")
    assert sorted(r["run"] for r in rows) == sorted(newest) and {r["status"] for r in rows} == {"FINISHED"}
    (jobs,) = query(db, f"SELECT value FROM tags WHERE run_uuid = '{parent_id}' AND key = 'jobs.finished'")
    last = query(db, f"SELECT step, value FROM metrics WHERE run_uuid = '{parent_id}' AND key = 'jobs_finished' "
                     "ORDER BY step DESC LIMIT 1")
    assert jobs == ("4",) and last == [(2, 4.0)]  # a step per attempt: the third attempt, all 4 finished

    # a different grid is refused before any job runs
    grid = [a if not a.startswith("trainer.seed=") else "trainer.seed=1,2,3" for a in GRID]
    out = run_cli(*grid, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/refused", f"resume={parent_id}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: resume: sweep {parent_id} ran a different grid: trainer.seed (1,2,3,4 -> 1,2,3); "
        "resume it with its own overrides")
    assert len(children(db)) == len(after)


def test_resume_last_needs_a_matching_sweep(tmp_path):
    """`resume=last` with no KILLED/FAILED sweep of these overrides: one line, exit 2, no run created."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("cnnlab"), tags={"cnnlab.sweep": "parent"}).info.run_id
    client.log_param(parent, "sweep.overrides", "model=tiny trainer.seed=1,2")
    client.log_param(parent, "sweep.keys", "trainer.seed")
    client.set_terminated(parent, "KILLED")
    out = run_cli("-m", "model=tiny", "dataset=synthetic", "trainer.seed=1,2,3", f"tracking.uri={uri}",
                  f"hydra.sweep.dir={tmp_path}/multirun", "resume=last")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "error: resume: last: no KILLED or FAILED sweep of experiment 'cnnlab' ran these overrides "
        "(resume=<parent_run_id> names one)")
    assert len(client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])) == 1
