"""Issue 11's acceptance, measured: parallel first runs, a killed run or sweep worker, bad stores and data.

    python benchmarks/faults.py                       # all four, defaults below
    python benchmarks/faults.py --runs 6 --repeats 5  # parallel first runs only: --only parallel

Each case runs `run.py` for real (tiny model, synthetic data unless said) against a fresh SQLite store in a
temporary folder, and prints one line of numbers. Kills only the processes it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "dataset=synthetic", "trainer.verbose=0"]


def cli(*args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def statuses(uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import open_store

    with open_store(uri):
        client = MlflowClient(tracking_uri=uri)
        return [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def parallel(runs: int, repeats: int) -> None:
    finished = total = 0
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            started = time.monotonic()
            procs = [cli(*TINY, "trainer.steps=10", "trainer.eval_every=5", "tracking.log_model=false",
                         f"trainer.seed={i}", f"tracking.uri={uri}") for i in range(runs)]
            codes = [p.wait(timeout=600) for p in procs]
            found = statuses(uri)
            finished += found.count("FINISHED")
            total += runs
            print(f"parallel repeat {repeat + 1}: exit codes {codes}, statuses {sorted(found)}, "
                  f"{time.monotonic() - started:.1f} s")
    print(f"parallel first runs: {finished}/{total} FINISHED")


def killed_run(steps: int, at_step: int) -> None:
    """A run SIGKILLed mid-training: its run stays RUNNING until the next run opens the store, which ends it KILLED."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.tracking import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        statuses(uri)  # create the store before polling it
        proc = cli(*TINY, f"trainer.steps={steps}", "trainer.eval_every=10", f"tracking.uri={uri}",
                   start_new_session=True)
        client, step, deadline = MlflowClient(tracking_uri=uri), 0, time.time() + 300
        try:
            while step < at_step and time.time() < deadline and proc.poll() is None:
                time.sleep(0.1)
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
                history = client.get_metric_history(runs[0].info.run_id, "val_loss") if runs else []
                step = max((m.step for m in history), default=0)
            proc.kill()
            proc.communicate(timeout=120)
        finally:
            proc.kill()
        before = statuses(uri)
        started = time.monotonic()
        Tracker.start(uri, "cnnlab", "next").end("FINISHED")
        print(f"run SIGKILLed at step {step} of {steps}: run {before}; the next run's start took "
              f"{time.monotonic() - started:.2f} s and left {statuses(uri)}")


def killed_sweep_worker(steps: int = 300, at_step: int = 50) -> None:
    """A 4-job sweep on 2 workers; the worker of the first child past `at_step` is SIGKILLed."""
    import csv
    import io

    from mlflow.artifacts import load_text
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        statuses(uri)  # create the store before polling it
        started = time.monotonic()
        proc = cli("-m", *TINY, f"trainer.steps={steps}", "trainer.eval_every=25", "trainer.seed=1,2,3,4",
                   "hydra/launcher=cnnlab", "hydra.launcher.n_jobs=2", f"tracking.uri={uri}",
                   f"hydra.sweep.dir={tmp}/multirun", start_new_session=True)
        client, victim, deadline = MlflowClient(tracking_uri=uri), None, time.time() + 600
        try:
            while victim is None and time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
                for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
                    history = client.get_metric_history(run.info.run_id, "val_loss")
                    if run.info.status == "RUNNING" and "process.pid" in run.data.tags \
                            and max((m.step for m in history), default=0) >= at_step:
                        victim = run
                        os.kill(int(run.data.tags["process.pid"]), signal.SIGKILL)
                        killed_at = time.monotonic() - started
                        break
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        children = {r.info.run_name: r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
        rows = list(csv.DictReader(io.StringIO(load_text(f"{parent.info.artifact_uri}/summary.csv"))))
        print(f"sweep, 4 jobs on 2 workers, worker of {victim.info.run_name if victim else None} SIGKILLed at "
              f"{killed_at:.1f} s: exit {proc.returncode} after {time.monotonic() - started:.1f} s; children "
              f"{children}; victim's error tag {client.get_run(victim.info.run_id).data.tags.get('error')!r}; "
              f"parent {parent.info.status}, summary.csv {len(rows)} rows")


def unreachable() -> None:
    for uri in ("http://127.0.0.1:9/", "postgresql://cnnlab:secret@127.0.0.1:9/mlflow"):
        started = time.monotonic()
        proc = cli(*TINY, "trainer.steps=10", f"tracking.uri={uri}")
        _, stderr = proc.communicate(timeout=600)
        print(f"tracking.uri={uri}: exit {proc.returncode} after {time.monotonic() - started:.1f} s; {errors(stderr)}")


def nan_pixels() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        x = rng.random((200, 28, 28), dtype=np.float32)
        x[3, 4, 5] = np.nan
        y = rng.integers(0, 10, 200)
        np.savez(f"{tmp}/mnist.npz", x_train=x, y_train=y, x_test=x[:50], y_test=y[:50])
        started = time.monotonic()
        proc = cli("model=tiny", "dataset.val_size=50", "trainer.steps=10", f"tracking.uri=sqlite:///{tmp}/db/mlflow.db",
                   env={"CNNLAB_DATA_DIR": tmp})
        _, stderr = proc.communicate(timeout=600)
        stored = Path(tmp, "db", "mlflow.db").exists()
        print(f"NaN pixels: exit {proc.returncode} after {time.monotonic() - started:.1f} s, store created: {stored}; "
              f"{errors(stderr)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["parallel", "killed", "sweep", "unreachable", "nan"])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cases = {"parallel": lambda: parallel(args.runs, args.repeats), "killed": lambda: killed_run(2000, 50),
             "sweep": killed_sweep_worker, "unreachable": unreachable, "nan": nan_pixels}
    for name, case in cases.items():
        if args.only in (None, name):
            case()


if __name__ == "__main__":
    main()
