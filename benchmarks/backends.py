"""The same LTFN5 run on each Keras backend: wall time of the process, training images/s, test accuracy.

    python benchmarks/backends.py --steps 200 --repeats 1

Runs `KERAS_BACKEND=<b> python run.py model=ltfn5 init=he trainer.steps=N` for tensorflow,
jax and torch in turn (as installed), each as a fresh process with tracking into one
SQLite store made before timing; images/s comes from the run's `images_per_second`
metric (steps 2..N, validation excluded). Prints a Markdown table with ratios to
TensorFlow and the CPU model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def one_run(backend: str, steps: int, uri: str) -> dict:
    cmd = [sys.executable, "run.py", "model=ltfn5", "init=he", f"trainer.steps={steps}", "trainer.verbose=0",
           f"tracking.uri={uri}", "tracking.log_model=false"]
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode:
        raise SystemExit(f"error: {backend}: exit {p.returncode}: {p.stderr[-1500:]}")
    run_id = p.stdout.rsplit("MLflow run ", 1)[1].split()[0]
    from mlflow.tracking import MlflowClient

    m = MlflowClient(uri).get_run(run_id).data.metrics
    return {"wall": wall, "ips": m["images_per_second"], "acc": m["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    backends = [b for b in BACKENDS if importlib.util.find_spec(b)]
    uri = f"sqlite:///{tempfile.mkdtemp(prefix='cnnlab-backends-')}/mlflow.db"
    subprocess.run([sys.executable, "-c", f"from mlflow.tracking import MlflowClient; "
                    f"MlflowClient('{uri}').search_experiments()"], check=True, capture_output=True)
    results = {b: [] for b in backends}
    for _ in range(args.repeats):
        for b in backends:  # alternating, so a slow spell of the machine hits every backend
            results[b].append(one_run(b, args.steps, uri))
            print(f"{b}: {results[b][-1]}", file=sys.stderr)
    print(f"{cpu_model()}, {os.cpu_count()} cores; LTFN5, {args.steps} steps of 100, medians of {args.repeats}\n")
    print("| backend | wall s | images/s | test acc | wall / TF | images/s / TF |\n|---|---|---|---|---|---|")
    med = {b: {k: statistics.median(r[k] for r in rs) for k in ("wall", "ips", "acc")} for b, rs in results.items()}
    tf = med.get("tensorflow")
    for b, m in med.items():
        ratios = f"{m['wall'] / tf['wall']:.2f}× | {m['ips'] / tf['ips']:.2f}×" if tf else "— | —"
        print(f"| {b} | {m['wall']:.1f} | {m['ips']:.0f} | {m['acc']:.4f} | {ratios} |")


if __name__ == "__main__":
    main()
