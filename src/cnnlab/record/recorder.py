"""Everything a run records, behind one object that owns its MLflow run: `Recorder` (or `NullRecorder`).

The methods follow a run's life: `start` (a new run, or a reopened one: `resume=`), `log_setup` (params
and tags), `log_datasets`, `log_diagnostics`, `confirm` (the store took the run: before any training time
is spent), `log_eval` (each evaluation), `check` (each step: has tracking failed?), `log_final`,
`log_outputs` (files and plots), `log_model`, `end`. The run is created owning this process's tags
(`cnnlab.record.liveness`), so a process killed outright leaves a run that the next command ends.

Each call returns at once and runs, in order, on one thread of this process. A failed call is kept in
`error` and skips the calls after it; `check` raises it as TrackingError, so training stops within a step.
A server that stops answering mid-run is tried again every 2 s for up to $CNNLAB_OUTAGE_SECONDS (MLflow's
own HTTP retries, `MIDRUN_HTTP`, inside each try); past that, that call and every later one go to a local
spool (`cnnlab.spool`) and training goes on.

Why not MLflow's async logging (`log_batch(..., synchronous=False)`): it sends batches from a pool of up to
10 threads (no order between a run's tags), takes only params, tags and metrics (not artifacts, models or
the run's end), and its futures are reachable only through a private attribute, so a failure is seen only
by waiting. One ordered thread gives all three.

Example:
    >>> rec = Recorder()                                      # doctest: +SKIP
    >>> rec.start("sqlite:////tmp/x/mlflow.db", "demo", "my-run")  # doctest: +SKIP
    >>> rec.log_eval(100, {"val_accuracy": 0.9})              # doctest: +SKIP
    >>> rec.end("FINISHED")  # waits for all of it          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path

RETRY_SECONDS = 2  # between tries of a call whose server is unreachable


class TrackingError(RuntimeError):
    """Tracking failed: an MLflow call failed, or the run could not be created. Starts with the cause."""


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def patiently(fn, args, seconds: float, unreachable):
    """`fn(*args)`, tried again every RETRY_SECONDS while the server is unreachable, for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn(*args)
        except Exception as e:
            if not unreachable(e) or time.monotonic() + RETRY_SECONDS > deadline:
                raise
            time.sleep(RETRY_SECONDS)


def _warm_up() -> None:
    """Import MLflow on the recorder's thread while the run loads its data and Keras."""
    import mlflow.entities  # noqa: F401
    import mlflow.tracking  # noqa: F401

    # a failed call reaches the user as one line (`check`), not as MLflow's log lines
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)


class OrderedThread:
    """One daemon thread that runs what is submitted, in order; `submit` returns a Future.

    Not `ThreadPoolExecutor(1)`, whose thread the interpreter joins at exit: a Ctrl-C that lands
    inside an import on the main thread can leave that module's import lock taken, and a recorder
    thread importing MLflow (which imports the same modules) then waits forever, and the process
    with it (seen with `benchmarks/ctrl_c.py`, SIGINT 4.0 s after launch). A run's own calls are
    all waited for by `Recorder.end`; nothing else needs the thread at exit.
    """

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread."""
        last = self.submit(lambda: None)
        self._queue.put(None)
        last.result()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # (kept for whoever waits on it)
                    future.set_exception(e)


class Recorder:
    """The run's MLflow record, in this process.

    `waited` is how long the caller was held up by tracking (its real cost to the run);
    `seconds` is the time MLflow itself took, on the recorder's thread (its import included).
    """

    enabled = True

    def __init__(self):
        from cnnlab.record.store import OUTAGE_ENV, OUTAGE_SECONDS

        self._pool = OrderedThread("cnnlab-mlflow")
        from cnnlab.spool import spool_root

        self.outage_seconds = float(os.environ.get(OUTAGE_ENV, OUTAGE_SECONDS))
        self.spool_root = spool_root()  # where a long outage's calls go ($CNNLAB_SPOOL_DIR as the run starts)
        self.tracker = self.spool = None
        self.error: str | None = None  # the first failure: later calls are skipped, the run ends FAILED
        self.waited, self.warm_up = 0.0, 0.0
        self.started = self.closed = self.ended = self._cancelled = False
        self.uri: str | None = None
        self._env_set: list[str] = []  # MIDRUN_HTTP values this recorder set (restored at close)
        self._submit(self._timed_warm_up, always=True)

    @property
    def run_id(self) -> str | None:
        return self.tracker and self.tracker.run_id

    @property
    def seconds(self) -> float:
        return self.warm_up + (self.tracker.seconds if self.tracker else 0.0)

    @property
    def spooled(self) -> str | None:
        """The folder keeping what the server could not take (`cnnlab.spool`), if any."""
        return self.spool and str(self.spool.folder)

    # --- the run's life, in order -------------------------------------------------------------
    def start(self, uri: str, experiment: str, run_name: str, parent_run_id: str | None = None,
              resume=None, tags: dict | None = None) -> None:
        """Open the store and create the run (a failure surfaces at `confirm` or `check`).

        `resume`: a function of an MlflowClient that returns the run to reopen instead
        (`cnnlab.run.resume.find_run`); a ConfigError it raises surfaces at `confirm`.
        """
        self.started, self.uri = True, uri
        self._submit(self._start, uri, experiment, run_name, parent_run_id, resume, tags)

    def tag(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)

    def log_setup(self, params: dict[str, str], tags: dict[str, str]) -> None:
        self._call("log_params", params)
        self._call("set_tags", tags)

    def log_datasets(self, inputs: list[dict]) -> None:
        """The data splits (`cnnlab.record.logged_model.dataset_inputs`: plain dicts) as the run's dataset inputs."""
        self._call("log_datasets", inputs)

    def log_diagnostics(self, metrics: dict[str, float]) -> None:
        self._call("log_metrics", 0, metrics)

    def confirm(self) -> None:
        """Wait until the run exists and everything so far is recorded; TrackingError if not."""
        self.flush()

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._call("log_metrics", step, metrics)

    def check(self) -> None:
        """Raise TrackingError if a call failed (cheap: call it every step)."""
        if self.error:
            raise TrackingError(self.error)

    def log_final(self, step: int, metrics: dict[str, float], tags: dict[str, str]) -> None:
        self._call("log_metrics", step, metrics)
        self._call("set_tags", tags)

    def log_outputs(self, folder: Path, figures: list) -> None:
        """Render `figures` ((fn, *args) into `folder`), upload the folder, then delete it."""
        for fn, *args in figures:
            self._submit(fn, *args)
        self._call("log_artifacts", str(folder))
        self._submit(shutil.rmtree, folder, True, always=True)

    def log_model(self, folder: Path, step: int, register_as: str | None) -> None:
        """Upload the MLflow model saved in `folder` as the run's logged model "model", then delete it."""
        self._call("log_model", str(folder), "model", step, register_as)
        self._submit(shutil.rmtree, folder, True, always=True)

    def end(self, status: str) -> None:
        """Finish what is queued, then end the run with `status` (FAILED if a call failed)."""
        if self.closed:
            return
        try:
            self._wait()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._submit(self._end_run, status, always=True)
            with contextlib.suppress(KeyboardInterrupt):
                self._wait()
            self.close()
        self.check()

    def end_anyway(self, status: str, cause: BaseException) -> None:
        """End a run that is failing (`cause`); if even that fails, say so in `error` (the run stays RUNNING
        until the next command ends it as a run whose process is gone)."""
        if self.closed:
            return
        from cnnlab.errors import ConfigError, Diverged

        if status == "KILLED" and self.tracker is None:  # interrupted before its run was made: make none
            self._cancelled = True  # (if one is being made right now, the next command ends it KILLED)
            self.closed = True  # and wait for nothing: the thread may be inside an import the interrupt broke
            return
        if status == "FAILED" and not isinstance(cause, (Diverged, ConfigError, TrackingError)):
            self._call("set_tags", {"error": f"{type(cause).__name__}: {str(cause)[:4000]}"})  # say why
        with contextlib.suppress(Exception):
            self.end(status)
        if self.started and self.run_id and not self.ended:
            self.error = f"{self.error or describe(cause)}; the store could not be told either: " \
                         f"run {self.run_id} stays RUNNING"

    def close(self) -> None:
        """Let the queued calls finish (an outage is waited out, then spooled), then stop the thread."""
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown()
        for key in self._env_set:
            os.environ.pop(key, None)

    def flush(self) -> None:
        """Wait until everything queued is done; raise TrackingError for the first call that failed."""
        self._wait()
        self.check()

    # --- the recorder's thread ------------------------------------------------------------------
    def _wait(self) -> None:
        started = time.perf_counter()
        try:
            if not self.closed:
                self._pool.submit(lambda: None).result()
        finally:
            self.waited += time.perf_counter() - started

    def _submit(self, fn, *args, always: bool = False) -> None:
        if not self.closed:
            self._pool.submit(self._run, fn, args, always)

    def _call(self, method: str, *args) -> None:
        self._submit(self._tracker_call, method, args)

    def _run(self, fn, args, always: bool) -> None:
        if self.error and not always:
            return  # the record is already broken: training stops on it at its next step
        try:
            fn(*args)
        except Exception as e:
            if not always or fn in (self._end_run, self._timed_warm_up):  # (clean-up failures do not count)
                self.error = self.error or describe(e)

    def _timed_warm_up(self) -> None:
        started = time.perf_counter()
        try:
            _warm_up()
        finally:
            self.warm_up = time.perf_counter() - started

    def _start(self, uri, experiment, run_name, parent_run_id, resume, tags) -> None:
        from cnnlab.record.store import MIDRUN_HTTP
        from cnnlab.record.tracking import Tracker

        if self._cancelled:
            return

        if resume is not None:
            self.tracker = Tracker.resume(uri, resume)
        else:
            self.tracker = Tracker.start(uri, experiment, run_name, tags=tags, parent_run_id=parent_run_id)
        self._env_set = [k for k in MIDRUN_HTTP if k not in os.environ]  # the user's own settings win
        os.environ.update({k: MIDRUN_HTTP[k] for k in self._env_set})  # the run exists: outlast outages

    def _tracker_call(self, method: str, args: tuple) -> None:
        from cnnlab.spool import Spool, unreachable

        if self.spool:
            self.spool.call(method, args)
            return
        try:
            patiently(getattr(self.tracker, method), args, self.outage_seconds, unreachable)
        except Exception as e:
            if not unreachable(e):
                raise
            # the run exists and its server is gone for minutes: keep this call and the rest on disk
            self.spool = Spool.create(self.spool_root, self.tracker.client.tracking_uri, self.run_id, describe(e))
            self.spool.call(method, args)

    def _end_run(self, status: str) -> None:
        from cnnlab.spool import Spool, unreachable

        status = "FAILED" if self.error and status == "FINISHED" else status
        if self.tracker is None:
            return
        if not self.spool:
            try:
                patiently(self.tracker.end, (status, self.error), self.outage_seconds, unreachable)
                self.ended = True
                return
            except Exception as e:
                if not unreachable(e):
                    raise
                self.spool = Spool.create(self.spool_root, self.tracker.client.tracking_uri, self.run_id, describe(e))
        self.spool.end(status, self.error)
        self.ended = True


class NullRecorder(Recorder):
    """`tracking=none`: the same calls, recording nothing."""

    enabled = False

    def __init__(self):
        self.waited = self.warm_up = 0.0
        self.tracker = self.spool = self.uri = self.error = None
        self.started = self.ended = False
        self.closed = True  # nothing is ever queued
