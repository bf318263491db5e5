"""A sweep job's fixed cost: what a short job spends besides training, from the runs it records.

    python benchmarks/sweep_overhead.py                 # 12 jobs x 50 steps, hydra.launcher.n_jobs=2
    python benchmarks/sweep_overhead.py --jobs 4 --steps 50

Runs `python run.py -m model=tiny dataset=synthetic trainer.steps=50 trainer.seed=1,...,N
hydra.launcher.n_jobs=2` into a fresh SQLite store, then prints the sweep's wall and CPU time
(the whole process tree), the wall per job per worker, and per job, from its MLflow run: the
run's life (created to ended), training (`train_seconds`), the model export (`export_seconds`) and
the time the run waited for MLflow (`tracking_wait_seconds`). "Fixed" is a job's wall per worker
less its training. The CPU model and the load average are printed beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        seeds = ",".join(str(i) for i in range(1, args.jobs + 1))
        cmd = [sys.executable, "run.py", "-m", "model=tiny", "dataset=synthetic", f"trainer.steps={args.steps}",
               f"trainer.seed={seeds}", f"hydra.launcher.n_jobs={args.workers}", f"tracking.uri={uri}",
               f"hydra.sweep.dir={tmp}/multirun"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            sys.exit(f"the sweep failed ({done.returncode}): {done.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        life = [(r.info.end_time - r.info.start_time) / 1000 for r in children]
        train = [r.data.metrics.get("train_seconds", 0.0) for r in children]
        export = [r.data.metrics.get("export_seconds", 0.0) for r in children]
        waited = [r.data.metrics.get("tracking_wait_seconds", 0.0) for r in children]
    per_job = wall * args.workers / args.jobs
    print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"sweep of {args.jobs} jobs x {args.steps} steps on {args.workers} workers: wall {wall:.1f} s, "
          f"CPU {cpu:.1f} s (whole process tree); {per_job:.2f} s per job per worker, "
          f"of which training {statistics.mean(train):.2f} s: fixed {per_job - statistics.mean(train):.2f} s")
    print(f"per job (mean of {len(children)} runs): run created -> ended {statistics.mean(life):.2f} s, "
          f"training {statistics.mean(train):.2f} s, model export {statistics.mean(export):.2f} s, "
          f"waiting for MLflow {statistics.mean(waited):.2f} s")


if __name__ == "__main__":
    main()
