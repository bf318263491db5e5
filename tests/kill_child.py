"""SIGKILL the process running a sweep's child run, once it is RUNNING and has logged `min_step`.

Run beside a sweep (e.g. inside the test's network and PID namespace, where the `process.pid`
tag a job records is a PID this process can signal). Bounded: gives up after `seconds`.

Example:
    python tests/kill_child.py /tmp/x/mlflow.db trainer.seed=11 20 150
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

QUERY = ("SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.name = ? AND r.status = 'RUNNING' "
         "AND t.key = 'process.pid' AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.step >= ?)")


def main(db: str, name: str, min_step: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                rows = conn.execute(QUERY, (name, min_step)).fetchall()
        except sqlite3.Error:
            rows = []  # the store is not there yet
        if rows:
            pid = int(rows[0][0])
            os.kill(pid, signal.SIGKILL)
            print(f"killed {pid} ({name})", flush=True)
            return 0
        time.sleep(0.5)
    print(f"{name}: no RUNNING child at step {min_step} within {seconds} s", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
