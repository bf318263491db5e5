"""What a run could not send to its MLflow server during a long outage, kept on disk to upload later.

A passing outage costs nothing: the run's recorder thread tries a call again every 2 s for up to
5 minutes (`$CNNLAB_OUTAGE_SECONDS`, default 300), while training goes on, then sends
everything it queued meanwhile. When a call still fails for want of the server, the recorder
(`cnnlab.record.recorder`) stops calling it and writes that call and every later one
(metrics, tags, artifacts, the model, the run's end) to a spool folder,
`mlruns/spool/<run_id>/` (`$CNNLAB_SPOOL_DIR/<run_id>/` if set); training finishes,
and the run prints one warning line naming the folder. Nothing is dropped:

    python -m cnnlab.spool mlruns/spool/<run_id>    # once the server is back: replay, in order

The upload replays the calls (metric points keep their original time), ends the run
with its real status and deletes the folder; interrupted, it continues where it stopped.

Example:
    >>> spool = Spool.create(Path("/tmp/s"), "http://h:5000", "abc")   # doctest: +SKIP
    >>> spool.call("log_metrics", (100, {"val_accuracy": 0.9}))          # doctest: +SKIP
    >>> upload(Path("/tmp/s/abc"))                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from cnnlab.record.store import REPO_ROOT, redact_uri

SPOOL_ENV = "CNNLAB_SPOOL_DIR"
CALLS = "calls.jsonl"  # line 1: {"uri", "run_id", "reason"}; then one call per line
DONE = "uploaded"  # how many call lines an interrupted upload already replayed


def spool_root() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or REPO_ROOT / "mlruns" / "spool")


def unreachable(e: BaseException) -> bool:
    """Did this MLflow call fail for want of the server (down, timing out, answering 5xx), after its retries?"""
    text = str(e)
    return any(s in text for s in ("Max retries exceeded", "timeout exception", "Connection aborted",
                                   "Connection refused", "RemoteDisconnected"))


class Spool:
    """An append-only log of the calls a run could not make; each line is flushed as it is written."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._file = open(folder / CALLS, "a")
        self.count = 0

    @classmethod
    def create(cls, root: Path, uri: str, run_id: str, reason: str = "") -> "Spool":
        folder = root / run_id
        folder.mkdir(parents=True, exist_ok=True)
        spool = cls(folder)
        if (folder / CALLS).stat().st_size == 0:
            spool._write({"uri": redact_uri(uri), "run_id": run_id, "reason": reason, "since": time.time()})
        return spool

    def call(self, method: str, args: tuple) -> None:
        """Keep one Tracker call; a folder to upload is copied now (the run deletes its own afterwards)."""
        if method in ("log_artifacts", "log_model"):  # a folder: the artifacts, or an MLflow model
            copy = self.folder / f"artifacts-{self.count}"
            shutil.copytree(args[0], copy, dirs_exist_ok=True)
            args = (str(copy), *args[1:])
        elif method == "log_metrics":
            args = (*args[:2], int(time.time() * 1000))  # the point's real time, not the upload's
        self._write({"call": method, "args": list(args)})

    def end(self, status: str, error: str | None) -> None:
        self._write({"end": status, "error": error})
        self._file.close()

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.count += 1


def upload(folder: Path, uri: str | None = None) -> int:
    """Replay a spool folder's calls on its run (at `uri`, else the URI it names); the number of calls sent.

    The URI written in the spool has no credentials: they come from MLflow's variables, as for runs.
    """
    from cnnlab.record.store import open_store
    from cnnlab.record.tracking import Tracker

    lines = (folder / CALLS).read_text().splitlines()
    head, calls = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or head["uri"]
    done_file = folder / DONE
    done = int(done_file.read_text()) if done_file.exists() else 0
    with open_store(uri):  # the server answers and takes our login, or one line now
        tracker = Tracker.attach(uri, head["run_id"])
        tracker.client.get_run(head["run_id"])  # the run must be there
    for i, record in enumerate(calls[done:], start=done):
        if "end" in record:
            tags = {"tracking.spooled": f"{len(calls) - 1} calls after: {head['reason'][:300]}"}
            if record.get("error"):
                tags["error"] = record["error"]
            tracker.set_tags(tags)
            tracker.end(record["end"])
        elif record["call"] == "log_metrics":
            tracker.log_metrics(*record["args"][:2], timestamp=record["args"][2])
        else:
            getattr(tracker, record["call"])(*record["args"])
        done_file.write_text(str(i + 1))
    if calls and "end" in calls[-1]:
        shutil.rmtree(folder)
    return len(calls) - done


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cnnlab.spool",
                                     description="Upload what runs spooled during a server outage.")
    parser.add_argument("folders", nargs="*", type=Path, help=f"spool folders (default: all in {spool_root()})")
    parser.add_argument("--uri", help="the MLflow server (default: $MLFLOW_TRACKING_URI, else the spool's)")
    args = parser.parse_args(argv)
    folders = args.folders or sorted(p for p in spool_root().glob("*") if (p / CALLS).exists())
    if not folders:
        print(f"nothing to upload in {spool_root()}")
        return 0
    code = 0
    for folder in folders:
        try:
            sent = upload(folder, args.uri)
            print(f"{folder}: {sent} calls uploaded")
        except Exception as e:
            from cnnlab.config.guard import redact_text

            print(f"error: {folder}: {redact_text(str(e).splitlines()[0] if str(e) else type(e).__name__)}",
                  file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
