"""cnnlab vs hand-written Keras: whole-process wall and CPU time, training throughput, time to first step, peak RSS.

    python benchmarks/bench.py --steps 100 --repeats 3
    python benchmarks/bench.py --steps 100 --repeats 1 --only-cnnlab --variant trainer.steps_per_execution=10

Runs `python run.py model=ltfn5 init=he trainer.steps=N` (tracking on, into a
SQLite store made once before timing, as a user's store exists after their first run) and `python benchmarks/handwritten_ltfn5.py --steps N`
alternately, each as a fresh process, and prints a Markdown table of medians
and ratios (cnnlab / hand-written). Throughput is images/s over steps 2..N,
validation excluded, measured by the same callback logic on both sides.
CPU seconds are user + system time of the whole process tree (git calls included;
cnnlab's MLflow work runs on a thread of the run's process), read with
getrusage(RUSAGE_CHILDREN) by the same small wrapper process on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict) -> dict:
    """Run one process; wall seconds from spawn to exit, stdout, stderr, spawn time."""
    spawn = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    return {"wall": wall, "spawn": spawn, "stdout": out, "stderr": err}


def measured(cmd: list[str], env: dict) -> tuple[dict, float, float]:
    """timed() plus the command's peak RSS (MB) and CPU seconds (user + system, its whole process tree).

    A small wrapper process (the same for both sides) runs the command and reads
    getrusage(RUSAGE_CHILDREN): every descendant that was waited for is in it (git's calls).
    """
    wrapper = ("import resource, subprocess, sys;"
               "r = subprocess.run(sys.argv[1:]);"
               "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print('RUSAGE', u.ru_maxrss, u.ru_utime + u.ru_stime, file=sys.stderr);"
               "sys.exit(r.returncode)")
    result = timed([sys.executable, "-c", wrapper, *cmd], env)
    kb, cpu = next(line.split()[1:] for line in result["stderr"].splitlines() if line.startswith("RUSAGE"))
    return result, int(kb) / 1024, float(cpu)


def cpu_model() -> str:
    """The CPU's model name, as `lscpu` shows it ('Model name')."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def run_cnnlab(steps: int, variant: list[str], env: dict, store: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    cmd = [sys.executable, "run.py", "model=ltfn5", "init=he", f"trainer.steps={steps}", f"tracking.uri={uri}",
           "trainer.verbose=0", f"hydra.run.dir={store}/hydra", *variant]
    result, rss, cpu = measured(cmd, env)
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    first_step = float(run.data.tags["timing.first_step_unix"]) - result["spawn"]
    return {"wall_s": result["wall"], "cpu_s": cpu, "images_per_s": run.data.metrics["images_per_second"],
            "first_step_s": first_step, "peak_rss_mb": rss, "test_accuracy": run.data.metrics["test_accuracy"],
            "tracking_wait_s": run.data.metrics["tracking_wait_seconds"]}


def open_store(store: Path) -> None:
    """Create the SQLite store and experiment up front, untimed: a user's store exists after their first run."""
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import artifact_location
    from cnnlab.record.tracking import ensure_experiment

    uri = f"sqlite:///{store}/mlflow.db"
    ensure_experiment(MlflowClient(tracking_uri=uri), "cnnlab", artifact_location(uri))


def run_handwritten(steps: int, env: dict) -> dict:
    cmd = [sys.executable, "benchmarks/handwritten_ltfn5.py", "--steps", str(steps)]
    result, rss, cpu = measured(cmd, env)
    out = json.loads(result["stdout"].strip().splitlines()[-1])
    return {"wall_s": result["wall"], "cpu_s": cpu, "images_per_s": out["images_per_second"],
            "first_step_s": out["first_step_unix"] - result["spawn"], "peak_rss_mb": rss,
            "test_accuracy": out["test_accuracy"]}


KEYS = ("wall_s", "cpu_s", "images_per_s", "first_step_s", "peak_rss_mb", "test_accuracy")


def table(results: dict[str, list[dict]]) -> str:
    med = {name: {k: statistics.median(r[k] for r in rows) for k in KEYS} for name, rows in results.items()}
    lines = ["| run | repeats | wall s | CPU s | images/s | first step s | peak RSS MB | test acc |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in med.items():
        lines.append(f"| {name} | {len(results[name])} | {m['wall_s']:.2f} | {m['cpu_s']:.1f} | {m['images_per_s']:.0f} | "
                     f"{m['first_step_s']:.2f} | {m['peak_rss_mb']:.0f} | {m['test_accuracy']:.4f} |")
    if "hand-written" in med:
        base = med["hand-written"]
        for name, m in med.items():
            if name != "hand-written":
                lines.append(f"| {name} / hand-written | | {m['wall_s'] / base['wall_s']:.3f}× | "
                             f"{m['cpu_s'] / base['cpu_s']:.3f}× | "
                             f"{m['images_per_s'] / base['images_per_s']:.3f}× | "
                             f"{m['first_step_s'] / base['first_step_s']:.3f}× | "
                             f"{m['peak_rss_mb'] / base['peak_rss_mb']:.3f}× | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-cnnlab", action="store_true")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra cnnlab overrides, space-separated; repeat for several variants")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("CNNLAB_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
    variants = {"cnnlab": []} | {f"cnnlab {v}": v.split() for v in args.variant}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    if not args.only_cnnlab:
        results["hand-written"] = []
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    store = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    open_store(store)
    for i in range(args.repeats):
        for name, overrides in variants.items():
            results[name].append(run_cnnlab(args.steps, overrides, env, store))
            print(f"[{i + 1}/{args.repeats}] {name}: {results[name][-1]}", file=sys.stderr)
        if not args.only_cnnlab:
            results["hand-written"].append(run_handwritten(args.steps, env))
            print(f"[{i + 1}/{args.repeats}] hand-written: {results['hand-written'][-1]}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"steps={args.steps}, batch 100, LTFN5 on MNIST, {os.cpu_count()} CPUs ({cpu_model()}), "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average at the end {load:.2f} "
          f"(started at {load0:.2f})\n")
    print(table(results))
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
