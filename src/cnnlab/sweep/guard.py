"""The sweep's guard: ends the parent run KILLED when the launcher dies without ending it (e.g. kill -9).

Started by `cnnlab.sweep.callback.MlflowSweepCallback` in its own session, it waits on stdin:
"done" means the launcher ended the parent itself; end of input without it means the
launcher is gone. Its workers die with it (PR_SET_PDEATHSIG) and each job's MLflow helper
ends its run KILLED; the guard waits (bounded) for that, ends any child still RUNNING,
writes the summary of what exists and ends the parent KILLED.

Example (what the callback runs):
    python -m cnnlab.sweep.guard sqlite:////tmp/x/mlflow.db <parent run id>
"""

from __future__ import annotations

import signal
import sys
import time

WAIT_FOR_CHILDREN = 30.0  # seconds for the jobs' MLflow helpers to end their runs


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    uri, parent_id = sys.argv[1:3]
    if b"done" in sys.stdin.buffer.read():
        return
    from mlflow.tracking import MlflowClient

    from cnnlab.record.tracking import Tracker
    from cnnlab.sweep.callback import finish_parent, summarize_children

    client = MlflowClient(tracking_uri=uri)
    if client.get_run(parent_id).info.status != "RUNNING":
        return
    deadline = time.monotonic() + WAIT_FOR_CHILDREN
    while time.monotonic() < deadline and any(r["status"] == "RUNNING" for r in summarize_children(client, parent_id)):
        time.sleep(1.0)
    finish_parent(Tracker(client, parent_id), "KILLED", "the sweep's launcher process died")
    print(f"sweep guard: the launcher died; MLflow parent run {parent_id} ended KILLED", file=sys.stderr)


if __name__ == "__main__":
    main()
