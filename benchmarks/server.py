"""Issue 13, measured: runs and sweeps on a team server (PostgreSQL + mlflow server, basic-auth, artifact proxy).

    python benchmarks/server.py                      # all of it (~10 min on 2 cores)
    python benchmarks/server.py --skip-load          # only the three acceptance checks

Starts a throwaway server with `tests/team_server.py`'s TeamServer (as `python tests/team_server.py` does)
and, against it, with real `run.py` processes:
1. wrong password: exit code, seconds, whether the password shows anywhere in the output;
2. outage: a 4,000-step `model=tiny` run (`trainer.eval_every=100`) whose server is stopped for
   `--outage` seconds (20) once the run has logged its 5th validation point, then started again on
   the same port: exit code, status, validation points (40 expected);
3. load: `--jobs` (8) parallel sweep jobs with `trainer.eval_every=1` (authenticated runs): metric
   points counted in PostgreSQL (psql on the `metrics` table) against the number the jobs logged
   (steps × 4 per job: train and validation loss/accuracy in one call per evaluation;
   `trainer.log_every=null`), duplicates, and the latency of a logging call: a client beside the jobs
   times `log_batch` calls of 4 metrics (one evaluation's worth) every 50 ms while they run.
Stops everything it started, by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from team_server import TeamServer  # noqa: E402

TINY = ["model=tiny", "tracking=server", "trainer.verbose=0", "tracking.log_model=false"]


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def psql(server: TeamServer, query: str) -> list[list[str]]:
    out = subprocess.run([str(server.postgres.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.postgres.port),
                          "-U", "mlflow", "-d", "mlflow", "-At", "-F", "\t", "-c", query],
                         capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def wrong_password(server: TeamServer) -> None:
    secret = "wrong-Pa55word-zz"
    env = {**os.environ, **server.client_env(), "MLFLOW_TRACKING_PASSWORD": secret}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "run.py", *TINY], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    seconds = time.monotonic() - started
    print(f"wrong password: exit {out.returncode} in {seconds:.1f} s; password in output: "
          f"{secret in out.stdout + out.stderr}; stderr: {out.stderr.strip()}")


def outage(server: TeamServer, client, down_seconds: float) -> None:
    args = [*TINY, "tracking.experiment=outage", "trainer.steps=4000", "trainer.eval_every=100"]
    env = {**os.environ, **server.client_env()}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:  # until its 5th validation point
            run = next(iter(runs_of(client, "outage")), None)
            if run and len(client.get_metric_history(run.info.run_id, "val_accuracy")) >= 5:
                break
            time.sleep(0.5)
        if run is None or proc.poll() is not None:
            sys.exit(f"the run ended before the outage: {proc.communicate()[1][-2000:]}")
        at = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        down = time.monotonic()
        server.mlflow.stop()
        time.sleep(max(0.0, down_seconds - (time.monotonic() - down)))
        stopped_for = time.monotonic() - down
        ready = server.mlflow.start(wait=False).wait_ready()
        out, err = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = time.monotonic() - started
    run = client.get_run(run.info.run_id)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    print(f"outage: run.py {' '.join(args)}\n  server stopped at the run's validation point {at}, down "
          f"{stopped_for:.1f} s + {ready:.1f} s to restart; run exit {proc.returncode} after {total:.0f} s, "
          f"status {run.info.status}, validation points {len(steps)} (distinct {len(set(steps))}), "
          f"test_accuracy {run.data.metrics.get('test_accuracy')}, tracking_wait_seconds "
          f"{run.data.metrics.get('tracking_wait_seconds', float('nan')):.2f}")
    if proc.returncode:
        print(err[-2000:])


def load(server: TeamServer, client, jobs: int, steps: int) -> None:
    from mlflow.entities import Metric

    probe = client.create_run(client.create_experiment("latency-probe")).info.run_id
    latencies, stop = [], threading.Event()

    def probe_loop():  # one evaluation's worth of metrics, as a run's recorder sends them
        step = 0
        while not stop.is_set():
            step += 1
            now = int(time.time() * 1000)
            t = time.perf_counter()
            client.log_batch(probe, metrics=[Metric(k, 0.5, now, step) for k in
                                             ("train_loss", "train_accuracy", "val_loss", "val_accuracy")])
            latencies.append(time.perf_counter() - t)
            stop.wait(0.05)

    seeds = ",".join(str(i) for i in range(1, jobs + 1))
    args = ["-m", *TINY, "tracking.experiment=load", f"trainer.seed={seeds}", f"trainer.steps={steps}",
            "trainer.eval_every=1", "trainer.log_every=null", "dataset.val_size=1000", f"hydra.launcher.n_jobs={jobs}"]
    thread = threading.Thread(target=probe_loop, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        out = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env={**os.environ, **server.client_env()},
                             capture_output=True, text=True, timeout=3600)
    finally:
        stop.set()
        thread.join(timeout=30)
    seconds = time.monotonic() - started
    runs = runs_of(client, "load")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [(r.info.run_id[:8], r.info.status, r.data.tags.get("jobs.finished")) for r in runs
               if r.data.tags.get("cnnlab.sweep") == "parent"]
    ids = "','".join(r.info.run_id for r in children)
    keys = "'train_loss','train_accuracy','val_loss','val_accuracy'"
    rows = psql(server, f"SELECT count(*), count(DISTINCT (run_uuid, key, step)) FROM metrics "
                        f"WHERE run_uuid IN ('{ids}') AND key IN ({keys})")
    stored, distinct = int(rows[0][0]), int(rows[0][1])
    expected = 4 * steps * len(children)
    waits = [r.data.metrics.get("tracking_wait_seconds", 0.0) for r in children]
    ordered = sorted(latencies)
    p50, p95 = statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]
    print(f"load: run.py {' '.join(args)}\n  exit {out.returncode} in {seconds:.0f} s; "
          f"sweep parents (id, status, jobs.finished) {parents}; "
          f"{sum(r.info.status == 'FINISHED' for r in children)}/{len(children)} children FINISHED; "
          f"metric points in PostgreSQL {stored} (distinct {distinct}), expected {expected}: lost {expected - distinct}, "
          f"duplicated {stored - distinct}\n  log_batch latency beside the jobs ({len(ordered)} calls): "
          f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; the jobs waited "
          f"{max(waits):.2f} s at most for tracking (tracking_wait_seconds)")
    if out.returncode:
        print(out.stderr[-3000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=200, help="steps per load job (each one an evaluation)")
    p.add_argument("--outage", type=float, default=20.0, help="seconds the server stays stopped")
    p.add_argument("--workers", type=int, default=2, help="the MLflow server's uvicorn workers")
    p.add_argument("--skip-load", action="store_true")
    a = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    started = time.monotonic()
    with TeamServer.start(workers=a.workers) as server:
        print(f"server: {server.uri} up in {time.monotonic() - started:.1f} s ({a.workers} workers)")
        os.environ.update(server.client_env())
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        wrong_password(server)
        outage(server, client, a.outage)
        if not a.skip_load:
            load(server, client, a.jobs, a.steps)


if __name__ == "__main__":
    main()
