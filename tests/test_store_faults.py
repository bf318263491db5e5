"""Faults of the MLflow store and of tracking, done for real: parallel first runs, a half-migrated store,
an unreachable or unusable store, the tracking helper killed, a store that turns read-only or fills up.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

TINY = ["model=tiny", "dataset=synthetic", "dataset.train_size=300", "dataset.val_size=50", "dataset.test_size=50",
        "trainer.steps=10", "trainer.eval_every=5", "trainer.verbose=0", "tracking.log_model=false"]
LONG = ["model=tiny", "dataset=synthetic", "trainer.steps=100000", "trainer.eval_every=5", "trainer.verbose=0"]


def all_runs(uri):
    """Every run in the store; opened under cnnlab's store lock, since a run may be creating it right now."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import open_store

    with open_store(uri):
        client = MlflowClient(tracking_uri=uri)
        return client.search_runs([e.experiment_id for e in client.search_experiments()])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def start_cli(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_training(uri: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until the run has logged a validation metric (training is under way), or fail."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the store may not exist yet
            found = all_runs(uri)
            if found and found[0].data.metrics.get("val_loss") is not None:
                return
    pytest.fail(f"training never started (exit {proc.poll()}): {proc.stderr.read()[-2000:] if proc.poll() else ''}")


def alembic_leftovers(db) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return [n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_alembic\\_tmp\\_%' "
                                        "ESCAPE '\\'")]


def test_parallel_first_runs_on_a_fresh_store_all_finish(tmp_path):
    """Three runs start at once on a store that does not exist yet (each used to fail on schema creation)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    procs = [start_cli(*TINY, f"tracking.uri={uri}", f"trainer.seed={i}") for i in range(3)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0, 0], [p.stderr.read()[-1500:] for p in procs]
    assert sorted(r.info.status for r in all_runs(uri)) == ["FINISHED"] * 3
    assert alembic_leftovers(tmp_path / "mlflow.db") == []


def test_half_migrated_store_is_repaired(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # a whole store...
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as c:  # ...that a killed migration left
        c.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
        c.commit()
    p = run_cli(*TINY, f"tracking.uri={uri}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert alembic_leftovers(tmp_path / "mlflow.db") == []
    assert [r.info.status for r in all_runs(uri)] == ["FINISHED"]


def test_half_created_store_is_refused_with_what_to_do(tmp_path):
    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE _alembic_tmp_runs (x)")
        c.commit()
    p = run_cli(*TINY, f"tracking.uri=sqlite:///{db}")
    assert p.returncode == 2
    (line,) = error_lines(p.stderr)
    assert "half-created schema (_alembic_tmp_runs)" in line and "move the file aside" in line
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("uri, says", [
    ("http://127.0.0.1:9/", "no MLflow server answers"),
    ("postgresql://cnnlab:secret@127.0.0.1:9/mlflow", "postgresql://***@127.0.0.1:9/mlflow"),
])
def test_unreachable_store_fails_fast_with_one_line(tmp_path, uri, says):
    started = time.monotonic()
    p = run_cli(*TINY, f"tracking.uri={uri}", timeout=120)
    seconds = time.monotonic() - started
    assert p.returncode == 2
    (line,) = error_lines(p.stderr)
    assert line.startswith("error: tracking.uri: cannot record to MLflow at") and says in line
    assert "secret" not in p.stderr and "Traceback" not in p.stderr
    assert seconds < 60  # ~2 s here alone; benchmarks/faults.py measures it (issue: <= 15 s)


def test_mlflow_tracking_uri_environment_variable_is_used(tmp_path):
    uri = f"sqlite:///{tmp_path}/env.db"
    p = run_cli(*TINY, env={"MLFLOW_TRACKING_URI": uri})
    assert p.returncode == 0, p.stderr[-2000:]
    assert [r.info.status for r in all_runs(uri)] == ["FINISHED"]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, unmounted afterwards (needs root, as on this project's machines and CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_store_folder_is_one_line(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    p = run_cli(*TINY, f"tracking.uri=sqlite:///{small_disk}/mlflow.db")
    assert p.returncode == 2
    (line,) = error_lines(p.stderr)
    assert "is not writable" in line and "Traceback" not in p.stderr


def fill_disk_during_training(disk, uri: str, *overrides: str) -> str:
    """Start a long run, fill `disk` once it trains; the run must stop: exit 4, one line (returned)."""
    proc = start_cli(*LONG, f"tracking.uri={uri}", *overrides)
    try:
        wait_for_training(uri, proc)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k"], capture_output=True)
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 4, stderr[-2000:]
    (line,) = error_lines(stderr)
    assert "training stopped at step" in line and "Traceback" not in stderr
    return line


def test_full_disk_mid_run_stops_training(small_disk, tmp_path):
    """The store's disk fills up during training: stopped at the next step, one line, nothing half-written."""
    uri = f"sqlite:///{small_disk}/mlflow.db"
    line = fill_disk_during_training(small_disk, uri, f"trainer.checkpoint_dir={tmp_path}/checkpoints")
    assert line.startswith("error: tracking:")
    os.remove(small_disk / "filler")  # room again, to read the store: no process could end the run before
    (run,) = all_runs(uri)
    assert run.info.status in ("FAILED", "RUNNING")


def test_artifact_folder_turning_read_only_fails_the_run(tmp_path):
    """The artifact folder becomes read-only (a read-only bind mount) before the run uploads its files."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = start_cli(*LONG[:2], "trainer.steps=300", "trainer.eval_every=5", "trainer.verbose=0",
                     f"tracking.uri={uri}")
    mounted = False
    try:
        wait_for_training(uri, proc)
        for args in (["--bind", str(artifacts), str(artifacts)], ["-o", "remount,bind,ro", str(artifacts)]):
            if subprocess.run(["mount", *args], capture_output=True).returncode:
                pytest.skip("cannot bind-mount here (not root?)")
            mounted = True
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
        if mounted:
            subprocess.run(["umount", "-l", str(artifacts)], capture_output=True)
    assert proc.returncode == 4, stderr[-2000:]
    (line,) = error_lines(stderr)
    assert line.startswith("error: tracking:") and "Read-only file system" in line
    (run,) = all_runs(uri)
    assert run.info.status == "FAILED" and "Read-only file system" in run.data.tags["error"]
    assert not list(artifacts.rglob("*.*"))  # no file half-written


def test_sweep_to_an_unreachable_store_stops_before_any_job(tmp_path):
    """Hydra only warns when a callback raises: the sweep must not run its jobs unrecorded and exit 0."""
    started = time.monotonic()
    p = run_cli("-m", *TINY, "init=he,glorot", "tracking.uri=http://127.0.0.1:9/",
                f"hydra.sweep.dir={tmp_path}/multirun", timeout=300)
    assert p.returncode == 2
    (line,) = error_lines(p.stderr)
    assert line.startswith("error: tracking.uri: cannot record to MLflow at 'http://127.0.0.1:9/'")
    assert "Traceback" not in p.stderr and "sweep: 2 jobs" not in p.stdout
    assert time.monotonic() - started < 60


def test_full_disk_for_checkpoints_stops_training(small_disk, tmp_path):
    """Checkpoints cannot be written (their disk is full): stopped at once, one line, the run FAILED with why."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    line = fill_disk_during_training(small_disk, uri, f"trainer.checkpoint_dir={small_disk}")
    assert line.startswith("error: checkpoint: cannot write a checkpoint in") and "No space left on device" in line
    (run,) = all_runs(uri)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]
    assert not [p for p in small_disk.rglob(".*tmp*")]  # no partial checkpoint left behind
