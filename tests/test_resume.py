"""Resume for real: a tiny deterministic run SIGKILLed / SIGTERMed mid-training, then `resume=<run_id>`.

Each resumed run must end FINISHED in the same MLflow run, with every metric step once and
the test loss of an uninterrupted run (separate store, same overrides).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

# 1024 synthetic images of batch 100 (11 batches an epoch): 400 steps cross epochs and a shuffle
OVERRIDES = ["model=tiny", "dataset=synthetic", "trainer.deterministic=true", "trainer.steps=400",
             "trainer.eval_every=20", "trainer.verbose=0"]


def store(folder: Path) -> str:
    return f"tracking.uri=sqlite:///{folder}/mlflow.db"


def client(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")


def start(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "run.py", *OVERRIDES, store(folder), *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 180) -> str:
    """The run id once its first checkpoint exists (bounded in time; fails if the run ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((folder / "checkpoints").glob("*/latest.json"))
        if found:
            return found[0].parent.name
        assert proc.poll() is None, f"the run ended before a checkpoint: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint within the time limit")


def metric_steps(folder: Path, run_id: str, key: str) -> list[int]:
    return [m.step for m in client(folder).get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> float:
    folder = tmp_path_factory.mktemp("whole")
    out = run_cli(*OVERRIDES, store(folder))
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = client(folder).search_runs([client(folder).get_experiment_by_name("cnnlab").experiment_id])
    return run.data.metrics["test_loss"]


def check_resumed(folder: Path, run_id: str, whole_loss: float) -> None:
    out = run_cli(*OVERRIDES, store(folder), f"resume={run_id}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming MLflow run {run_id} at step " in out.stdout  # the same MLflow run, no new one
    runs = client(folder).search_runs([client(folder).get_experiment_by_name("cnnlab").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert f"{run.data.metrics['test_loss']:.6g}" == f"{whole_loss:.6g}"
    steps = metric_steps(folder, run_id, "val_loss")
    assert steps == list(range(20, 401, 20)), steps  # every evaluation once, none repeated or missing
    assert metric_steps(folder, run_id, "initial_loss") == [0]
    assert int(run.data.tags["resumed_from_step"]) > 0
    assert not (folder / "checkpoints" / run_id).exists()  # removed once FINISHED


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    proc = start(tmp_path)
    run_id = wait_for_checkpoint(tmp_path, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert client(tmp_path).get_run(run_id).info.status == "RUNNING"  # nobody could end it: the resume does
    check_resumed(tmp_path, run_id, uninterrupted)


def test_sigterm_checkpoints_then_resume_finishes(tmp_path, uninterrupted):
    proc = start(tmp_path)
    run_id = wait_for_checkpoint(tmp_path, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["resumable"] == "true"
    check_resumed(tmp_path, run_id, uninterrupted)


def test_resume_refuses_a_different_config_then_resume_last_keeps_the_best(tmp_path):
    proc = start(tmp_path)
    run_id = wait_for_checkpoint(tmp_path, proc)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    out = run_cli(*OVERRIDES, store(tmp_path), "optimizer.lr=0.5", f"resume={run_id}")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: resume:") and "optimizer.lr (0.001 -> 0.5)" in line, out.stderr
    assert "trainer.steps (" not in line
    assert client(tmp_path).get_run(run_id).info.status == "KILLED"  # untouched
    out = run_cli(*OVERRIDES, store(tmp_path), "resume=0123456789abcdef")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: resume: no checkpoint"), out.stderr
    # resume=last finds it (the latest KILLED run with this config); keep_best may be switched on
    out = run_cli(*OVERRIDES, store(tmp_path), "resume=last", "trainer.keep_best=val_loss")
    assert out.returncode == 0, out.stderr[-2000:]
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client(tmp_path).get_metric_history(run_id, "val_loss")
    since = int(run.data.tags["resumed_from_step"])  # keep_best was off before: the best since the resume
    best = min((m for m in history if m.step > since), key=lambda m: m.value)
    assert int(run.data.tags["best.step"]) == best.step and float(run.data.tags["best.val_loss"]) == best.value
    assert "best.weights.h5" in [f.path for f in client(tmp_path).list_artifacts(run_id)]


def test_config_differences_allow_a_growing_budget_and_ignore_what_does_not_train():
    from cnnlab.run.resume import differences

    logged = {"optimizer.lr": "0.001", "trainer.steps": "300", "trainer.verbose": "auto", "tracking.uri": "a"}
    same = {**logged, "trainer.steps": "600", "trainer.verbose": "0", "tracking.uri": "b", "resume": "last",
            "trainer.checkpoint_every": "50"}
    assert differences(logged, same) == []
    assert differences(logged, {**same, "trainer.steps": "200"}) == ["trainer.steps (300 -> 200)"]
    assert differences(logged, {**same, "init.hidden.scheme": "he"}) == ["init.hidden.scheme (unset -> he)"]
