"""Memory across the jobs of a sweep: does a reused worker process grow from job to job?

    python benchmarks/sweep_memory.py --jobs 8 --steps 50

Runs one real sweep of LTFN5 jobs (`trainer.seed=0..N-1`, tracking on) with one
joblib worker, so every job runs in the same process, then reads each child
run's `rss_mb` (resident memory after training and testing) and `peak_rss_mb`
from the MLflow store in start order and prints them with the growth from the
second job to the last (the first job pays one-off costs: imports, tracing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default="ltfn5")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="cnnlab-memory-"))
    uri = f"sqlite:///{store}/mlflow.db"
    seeds = ",".join(str(i) for i in range(args.jobs))
    cmd = [sys.executable, "run.py", "-m", f"model={args.model}", "init=he", f"trainer.steps={args.steps}",
           f"trainer.seed={seeds}", "trainer.verbose=0", "hydra.launcher.n_jobs=1", f"tracking.uri={uri}",
           f"hydra.sweep.dir={store}/multirun"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("CNNLAB_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cnnlab")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    children = [r for r in runs if r.data.tags.get("cnnlab.sweep") != "parent"]
    print(f"{args.jobs} jobs of {args.model}, {args.steps} steps each, one worker\n")
    print("| job | worker pid | status | rss MB | peak RSS MB |\n|---|---|---|---|---|")
    rss = []
    for i, run in enumerate(children, 1):
        m = run.data.metrics
        rss.append(m.get("rss_mb"))
        print(f"| {i} | {run.data.tags.get('process.pid')} | {run.info.status} | {m.get('rss_mb', float('nan')):.0f} | "
              f"{m.get('peak_rss_mb', float('nan')):.0f} |")
    if len(rss) > 2 and None not in rss:
        print(f"\nrss growth from job 2 to job {len(rss)}: {rss[-1] - rss[1]:+.0f} MB "
              f"({(rss[-1] - rss[1]) / (len(rss) - 2):+.1f} MB per job)")


if __name__ == "__main__":
    main()
