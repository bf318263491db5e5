"""The same sweep on one machine and on a 2-node Ray cluster: wall seconds.

    python benchmarks/cluster.py --jobs 4 --steps 60              # cnnlab n_jobs=1, n_jobs=2, Ray 2 nodes
    python benchmarks/cluster.py --only ray             # of: cnnlab1 cnnlab2 cnnlab2-tfthreads joblib2 ray

Each variant runs one real sweep of LTFN5 jobs on MNIST (`trainer.seed=0..N-1`, tracking on,
a fresh SQLite store) and reports the sweep command's wall time and its job count. The Ray
cluster (a head and a second node, `--num-cpus 1` each: two jobs at once, as n_jobs=2) is
started inside a private network and PID namespace (`unshare`, root): there Ray binds 127.0.0.1,
and every Ray process ends with the namespace. Its start-up is timed apart from the sweep.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT = 6391
VARIANTS = {
    "cnnlab1": ["hydra/launcher=cnnlab", "hydra.launcher.n_jobs=1"],
    "cnnlab2": ["hydra/launcher=cnnlab", "hydra.launcher.n_jobs=2"],
    "joblib2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "cnnlab2-tfthreads": ["hydra/launcher=cnnlab", "hydra.launcher.n_jobs=2"],  # CNNLAB_JOB_CPUS=0: TF's pools
    "ray": ["hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{PORT}",
            "tracking.shared_filesystem=true"],
}


def sweep_command(variant: str, jobs: int, steps: int, store: Path) -> list[str]:
    seeds = ",".join(str(i) for i in range(jobs))
    return [sys.executable, "run.py", "-m", "model=ltfn5", "init=he", f"trainer.steps={steps}", f"trainer.seed={seeds}",
            "trainer.verbose=0", *VARIANTS[variant], f"tracking.uri=sqlite:///{store}/mlflow.db",
            f"hydra.sweep.dir={store}/multirun"]


def run_sweep(cmd: list[str], env: dict, log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    summary = next((line for line in log.read_text().splitlines() if line.startswith("sweep: ") and "jobs" in line),
                   f"exit {code}, no summary (see {log})")
    return seconds, summary


def inside_namespace(args) -> None:
    """In the namespace: loopback up, two Ray nodes, the sweep, `ray stop`; prints 'start S' and 'sweep S | ...'."""
    ray = str(Path(sys.executable).parent / "ray")
    store = Path(args.store)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    started = time.perf_counter()
    with open(store / "ray.log", "w") as log:
        subprocess.run([ray, "start", "--head", "--port", str(PORT), "--num-cpus", "1", "--include-dashboard=false",
                        "--disable-usage-stats", "--temp-dir", str(store / "ray")], check=True, stdout=log, stderr=log)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{PORT}", "--num-cpus", "1", "--disable-usage-stats"],
                       check=True, stdout=log, stderr=log)
    print(f"start {time.perf_counter() - started:.1f}", flush=True)
    try:
        seconds, summary = run_sweep(sweep_command("ray", args.jobs, args.steps, store), dict(os.environ),
                                     store / "sweep.log")
        print(f"sweep {seconds:.1f} | {summary}", flush=True)
    finally:
        subprocess.run(["timeout", "30", ray, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--inside-namespace", dest="store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("CNNLAB_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    if args.store:
        return inside_namespace(args)
    print(f"{args.jobs} jobs × {args.steps} LTFN5 steps (MNIST); {os.cpu_count()} cores, {cpu_model()}; "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    print("| launcher | sweep wall s | cluster start s | result |\n|---|---|---|---|")
    for variant in args.only or ["cnnlab1", "cnnlab2", "ray"]:
        store = Path(tempfile.mkdtemp(prefix=f"cnnlab-cluster-{variant}-"))
        if variant != "ray":
            # CNNLAB_JOB_CPUS=0: each job keeps TensorFlow's own thread pools (one thread per core)
            job_env = {**env, "CNNLAB_JOB_CPUS": "0"} if variant.endswith("tfthreads") else env
            seconds, summary = run_sweep(sweep_command(variant, args.jobs, args.steps, store), job_env,
                                         store / "sweep.log")
            label = " ".join(VARIANTS[variant][:2]) + (" (CNNLAB_JOB_CPUS=0)" if job_env is not env else "")
            print(f"| {label} | {seconds:.1f} | | {summary} |", flush=True)
            continue
        token = secrets.token_hex(32)  # Ray's token authentication, for this cluster only
        # Ray starts its workers at nice 15: at 0 they compete for the cores as the other launchers' workers do
        ray_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_worker_niceness": "0"}
        cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable, __file__, "--jobs",
               str(args.jobs), "--steps", str(args.steps), "--inside-namespace", str(store)]
        out = subprocess.run(cmd, cwd=REPO, env=ray_env, capture_output=True, text=True, timeout=3600).stdout
        start = next((line.split()[1] for line in out.splitlines() if line.startswith("start ")), "?")
        sweep = next((line for line in out.splitlines() if line.startswith("sweep ")), f"sweep ? | failed: {out[-300:]}")
        seconds, summary = sweep[len("sweep "):].split(" | ", 1)
        print(f"| ray, 2 nodes × 1 CPU (127.0.0.1) | {seconds} | {start} | {summary} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
