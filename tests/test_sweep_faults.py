"""Sweeps under faults, for real: a sweep worker SIGKILLed mid-job, Ctrl-C, and SIGKILL of the launcher.

Each test starts `python run.py -m ...` (hydra/launcher=cnnlab, 2 workers) in its own session,
watches the MLflow SQLite store, sends the signal to a process it started (by PID), and checks
that every run ends in a recorded final state. Every wait is bounded; `finally` kills what is left.
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

import pytest
from conftest import REPO

# jobs of ~10 s each on a 2-core machine (the workers' TensorFlow import comes on top)
SWEEP = ["-m", "model=tiny", "dataset=synthetic", "trainer.eval_every=50", "trainer.verbose=0",
         "hydra/launcher=cnnlab", "hydra.launcher.n_jobs=2"]


WORKER = b"spawn_main"  # in a multiprocessing worker's command line (cnnlab.sweep.launcher)


class Sweep:
    """A sweep subprocess in its own session, and its MLflow store."""

    def __init__(self, tmp, steps: int, seeds: str = "1,2,3,4"):
        self.db = tmp / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"
        self.out, self.err = tmp / "stdout.txt", tmp / "stderr.txt"
        self.worker_pids: set[int] = set()
        args = [sys.executable, "run.py", *SWEEP, f"trainer.seed={seeds}", f"trainer.steps={steps}",
                f"tracking.uri={self.uri}", f"hydra.sweep.dir={tmp}/multirun"]
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=err, start_new_session=True)

    def query(self, sql: str) -> list[tuple]:
        try:
            with sqlite3.connect(self.db, timeout=10) as db:
                return db.execute(sql).fetchall()
        except sqlite3.Error:
            return []  # not created yet

    def running_children(self, min_step: int) -> dict[str, int]:
        """RUNNING child runs that have logged an evaluation at `min_step` or later → their worker's PID."""
        rows = self.query("SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                          "WHERE t.key = 'process.pid' AND r.status = 'RUNNING' AND EXISTS (SELECT 1 FROM metrics m "
                          f"WHERE m.run_uuid = r.run_uuid AND m.step >= {min_step})")
        return {run: int(pid) for run, pid in rows}

    def wait_running(self, count: int, min_step: int = 50, timeout: float = 300) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = self.running_children(min_step)
            if len(found) >= count:
                self.worker_pids |= set(found.values())
                return found
            time.sleep(0.3)
        pytest.fail(f"no {count} jobs running after {timeout} s; stderr: {self.err.read_text()[-2000:]}")

    def workers(self) -> list[int]:
        """The launcher's sweep worker processes (its multiprocessing children: spawn_main), from /proc."""
        found = []
        for entry in os.scandir("/proc"):
            stat = _read(f"/proc/{entry.name}/stat") if entry.name.isdigit() else b""
            if stat and int(stat.rsplit(b")", 1)[1].split()[1]) == self.proc.pid \
                    and WORKER in _read(f"/proc/{entry.name}/cmdline"):
                found.append(int(entry.name))
        self.worker_pids |= set(found)
        return sorted(found)

    def statuses(self) -> dict[str, tuple]:
        """run name → (status, is child, error tag)"""
        rows = self.query("SELECT r.name, r.status, "
                          "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'), "
                          "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'error') FROM runs r")
        return {name: (status, parent is not None, error) for name, status, parent, error in rows}

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not end in {timeout} s")

    def cleanup(self) -> None:
        """Kill what this test started and is still alive: the launcher's group, then its workers by PID."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for pid in self.worker_pids:
            if alive(pid) and WORKER in _read(f"/proc/{pid}/cmdline"):
                os.kill(pid, signal.SIGKILL)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """A live process (a zombie waiting to be reaped counts as dead)."""
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def parent_summary(uri: str, dst) -> list[dict]:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    path = download_artifacts(run_id=parent.info.run_id, artifact_path="summary.csv", tracking_uri=uri,
                              dst_path=str(dst))
    return list(csv.DictReader(io.StringIO(open(path).read())))


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_killed_worker_fails_only_its_job(tmp_path):
    sweep = Sweep(tmp_path, steps=300)
    try:
        victim_run, victim_pid = next(iter(sweep.wait_running(1).items()))
        os.kill(victim_pid, signal.SIGKILL)  # as the OOM killer would
        code = sweep.wait(timeout=600)
        stderr = sweep.err.read_text()
        assert code == 0, stderr[-3000:]
        assert f"sweep worker {victim_pid} died: killed by SIGKILL" in stderr
        runs = sweep.statuses()
        children = {name: v for name, v in runs.items() if v[1]}
        (parent,) = [v for v in runs.values() if not v[1]]
        assert parent[0] == "FINISHED"
        assert sorted(children) == [f"trainer.seed={i}" for i in range(1, 5)]
        victim = sweep.query(f"SELECT name FROM runs WHERE run_uuid = '{victim_run}'")[0][0]
        assert children[victim][0] in ("FAILED", "KILLED")
        assert children[victim][2] == f"sweep worker {victim_pid} died: killed by SIGKILL"
        assert [v[0] for n, v in children.items() if n != victim] == ["FINISHED"] * 3
        rows = parent_summary(sweep.uri, tmp_path / "dl")
        assert len(rows) == 4 and sorted(r["status"] for r in rows) == sorted(v[0] for v in children.values())
        assert "sweep: 4 jobs, 3 finished, 1 failed" in sweep.out.read_text()
    finally:
        sweep.cleanup()


def test_ctrl_c_kills_open_runs_and_workers(tmp_path):
    sweep = Sweep(tmp_path, steps=3000)
    try:
        sweep.wait_running(2, min_step=50)
        os.killpg(sweep.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        code = sweep.wait(timeout=120)
        stderr = sweep.err.read_text()
        assert code == 130, stderr[-3000:]
        assert "error: sweep interrupted by SIGINT" in stderr
        assert "Traceback" not in stderr
        runs = sweep.statuses()
        assert "RUNNING" not in {v[0] for v in runs.values()}
        (parent,) = [v for v in runs.values() if not v[1]]
        assert parent[0] == "KILLED"
        children = [v for v in runs.values() if v[1]]
        assert len(children) >= 2 and {v[0] for v in children} == {"KILLED"}
        assert len(parent_summary(sweep.uri, tmp_path / "dl")) == len(children)
        assert wait_until(lambda: not any(alive(pid) for pid in sweep.worker_pids), timeout=10)
    finally:
        sweep.cleanup()


def test_sigkill_of_launcher_takes_workers_and_ends_runs(tmp_path):
    sweep = Sweep(tmp_path, steps=3000)
    try:
        sweep.wait_running(2, min_step=50)
        os.kill(sweep.proc.pid, signal.SIGKILL)
        sweep.wait(timeout=30)
        assert wait_until(lambda: not any(alive(pid) for pid in sweep.worker_pids), timeout=10), \
            "a sweep worker outlived its launcher"
        # each worker stopped its job as on SIGTERM: the job ended its own run KILLED
        assert {v[0] for v in sweep.statuses().values() if v[1]} == {"KILLED"}, sweep.statuses()
        # the launcher could not end the parent; the next command that opens the store does (cnnlab.record.liveness)
        (parent,) = [v for v in sweep.statuses().values() if not v[1]]
        assert parent[0] == "RUNNING"
        report = subprocess.run([sys.executable, "-m", "cnnlab.report", "--tracking-uri", sweep.uri,
                                 "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert report.returncode == 0, report.stderr[-2000:]
        runs = sweep.statuses()
        (parent,) = [v for v in runs.values() if not v[1]]
        assert parent[0] == "KILLED" and parent[2].startswith(f"its process {sweep.proc.pid} on ")
        assert "RUNNING" not in {v[0] for v in runs.values()}
    finally:
        sweep.cleanup()


def test_worker_killed_before_its_job_made_a_run(tmp_path):
    sweep = Sweep(tmp_path, steps=20, seeds="1,2")
    try:
        assert wait_until(lambda: len(sweep.workers()) == 2, timeout=120, interval=0.2)
        victim = sweep.workers()[0]
        time.sleep(1.0)  # the worker is importing TensorFlow for its first job: no MLflow run exists yet
        assert not sweep.query("SELECT 1 FROM tags WHERE key = 'mlflow.parentRunId'")  # no job's run yet
        os.kill(victim, signal.SIGKILL)
        code = sweep.wait(timeout=600)
        assert code == 0, sweep.err.read_text()[-3000:]
        children = {n: v for n, v in sweep.statuses().items() if v[1]}
        assert sorted(children) == ["trainer.seed=1", "trainer.seed=2"]
        failed = [v for v in children.values() if v[0] == "FAILED"]
        assert len(failed) == 1 and failed[0][2] == f"sweep worker {victim} died: killed by SIGKILL"
        assert "sweep: 2 jobs, 1 finished, 1 failed" in sweep.out.read_text()
    finally:
        sweep.cleanup()
