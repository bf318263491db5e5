"""MLflow in a helper process: a run's tracking calls, in order, off the training process.

Importing MLflow, opening its store, logging and rendering plots is seconds of
pure Python. On a thread of the training process it held the GIL against
TensorFlow's import (a 100-step run: 1.14x a hand-written script's wall time);
in its own process it runs on the other core (1.02x; benchmarks/RESULTS.md).
The helper sits in its own session, so Ctrl-C reaches only the training
process, which then ends the run as KILLED; if the training process dies
without ending the run, the helper ends it as KILLED itself.

Example:
    >>> worker = TrackingWorker()                      # doctest: +SKIP
    >>> worker.start("sqlite:////tmp/x/mlflow.db", "demo", "my-run")
    >>> worker.log_metrics(100, {"val_accuracy": 0.9})  # returns at once
    >>> worker.end("FINISHED")                          # waits for all of it
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path


class TrackingError(RuntimeError):
    """A tracking call failed in the helper process; the message starts with the error's type."""


class TrackingWorker:
    """The training process's side: every call is sent at once; `flush()` waits and raises the first error.

    `waited` is how long the caller was held up by tracking, its real cost to the run;
    `seconds` is the time MLflow itself took in the helper (import included).
    """

    def __init__(self):
        src = str(Path(__file__).resolve().parents[1])  # cnnlab importable even when not installed
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen([sys.executable, "-m", "cnnlab.tracking_worker"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.waited = 0.0
        self.started = self.closed = False
        self.run_id: str | None = None
        self.seconds = 0.0

    def _send(self, *message) -> None:
        try:
            pickle.dump(message, self._proc.stdin)
            self._proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the helper has died (the next flush says so) or was closed

    def start(self, uri: str, experiment: str, run_name: str, parent_run_id: str | None = None) -> None:
        """Open the store and create the run (errors surface at the next `flush`)."""
        self.started = True
        self._send("start", uri, experiment, run_name, parent_run_id)

    def run_in_background(self, fn, *args, **kwargs) -> None:
        """Queue a module-level function (e.g. rendering a plot) behind the calls already queued."""
        self._send("run", fn, args, kwargs)

    def __getattr__(self, method: str):  # log_params, set_tags, log_metrics, log_artifacts
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self._send("call", method, args, kwargs)

    def flush(self) -> None:
        """Wait until everything sent is done; raise TrackingError for the first call that failed."""
        started = time.perf_counter()
        try:
            self._send("flush")
            try:
                error, self.run_id, self.seconds = pickle.load(self._proc.stdout)
            except (EOFError, pickle.UnpicklingError, OSError, ValueError):
                raise TrackingError(f"the MLflow helper process exited with code {self._proc.wait()}") from None
        finally:
            self.waited += time.perf_counter() - started
        if error:
            raise TrackingError(error)

    def end(self, status: str) -> None:
        """Finish what is queued, then end the run with `status` (FAILED if a queued call failed)."""
        if self.closed:
            return
        try:
            self.flush()
        except TrackingError:
            status = "FAILED"  # the run's record is incomplete
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._send("end", status)
            self.close()

    def close(self) -> None:
        """Stop the helper; a run it started and nobody ended is marked KILLED."""
        self.closed = True
        if not self.started:
            self._proc.kill()  # no run to end (e.g. the data failed to load): don't wait for MLflow's import
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc.stdout.close()


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def serve(inbox, outbox) -> None:
    """The helper's loop: run each message in order until `end` or until the training process is gone."""
    from cnnlab.tracking import Tracker

    tracker, error = None, None
    started = time.perf_counter()
    try:  # warm up while the training process loads data and TensorFlow
        import mlflow.entities  # noqa: F401
        import mlflow.tracking  # noqa: F401

        from cnnlab.plots import pyplot

        pyplot()
    except Exception as e:
        error = describe(e)
    warm_up = time.perf_counter() - started  # MLflow's import: part of what tracking costs
    while True:
        try:
            kind, *args = pickle.load(inbox)
        except EOFError:
            kind, args = "end", ["KILLED"]  # the training process is gone without ending its run
        except Exception:  # an unreadable message: the stream cannot be trusted past it
            kind, args = "end", ["FAILED"]
        if kind == "flush":
            pickle.dump((error, tracker and tracker.run_id, warm_up + (tracker.seconds if tracker else 0.0)), outbox)
            outbox.flush()
            error = None
        elif kind == "end":
            if tracker:
                try:
                    tracker.end(args[0])
                except Exception:
                    pass  # nothing left to tell: the training process has moved on
            return
        elif kind == "call" and (tracker is None or error):
            continue  # no run to log to, or the record is already broken: the next flush reports it
        else:
            try:
                if kind == "start":
                    tracker = Tracker.start(*args[:3], parent_run_id=args[3])
                elif kind == "call":
                    method, call_args, call_kwargs = args
                    getattr(tracker, method)(*call_args, **call_kwargs)
                else:
                    fn, call_args, call_kwargs = args
                    fn(*call_args, **call_kwargs)
            except Exception as e:
                error = error or describe(e)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries must not corrupt replies
    serve(sys.stdin.buffer, channel)
    channel.close()
    os._exit(0)  # the store has committed; skip tearing down MLflow and matplotlib


if __name__ == "__main__":
    main()
