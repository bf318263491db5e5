"""Ctrl-C at every moment of a run's start: does each one end in one line, exit 130, within seconds?

    python benchmarks/ctrl_c.py                      # SIGINT at 0.5, 1.0, ... 8.0 s after launch
    python benchmarks/ctrl_c.py --at 3.5 4.0 --repeats 3

Starts `python run.py model=tiny dataset=synthetic trainer.steps=3000` (a fresh SQLite store each
time) with SIGINT at its default disposition, as a terminal's command has it (a child of a background
shell inherits it ignored), sends SIGINT after the given delay, and prints per delay: the exit code,
the seconds from the signal to the exit, the number of stderr lines and the MLflow run's status.
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

REPO = Path(__file__).resolve().parents[1]


def sigint_at_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def status(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        return ",".join(r.info.status for r in runs) or "no run"
    except Exception:
        return "no store"


def once(delay: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        proc = subprocess.Popen([sys.executable, "run.py", "model=tiny", "dataset=synthetic", "trainer.steps=3000",
                                 "trainer.verbose=0", f"tracking.uri={uri}", f"hydra.run.dir={tmp}/out"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=sigint_at_default)
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            return f"SIGINT at {delay:4.1f} s: NO EXIT within 120 s (killed); run {status(uri)}; stderr {err[-300:]!r}"
        finally:
            proc.kill()
        lines = [line for line in err.splitlines() if line.strip()]
        return (f"SIGINT at {delay:4.1f} s: exit {proc.returncode}, {time.monotonic() - sent:5.1f} s to exit, "
                f"{len(lines)} stderr line(s) {lines[-1][:70]!r}; run {status(uri)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, nargs="*", default=[0.5 * i for i in range(1, 17)])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for delay in args.at:
        for _ in range(args.repeats):
            print(once(delay), flush=True)


if __name__ == "__main__":
    main()
