"""Everything a run records, behind one object: `Recorder` (MLflow, via a helper process) or `NullRecorder`.

The methods follow a run's life: `start` (or reopen one: `resume=`), `log_setup` (params and tags),
`log_datasets`, `log_diagnostics`, `confirm` (the store took the run: before any training
time is spent), `log_eval` (each evaluation), `check` (each step: has
tracking failed?), `log_final`, `log_outputs` (files and plots), `log_model`, `end`.
Each call returns at once; the helper process (`cnnlab.record.worker`)
runs them in order. A failed call, or a helper that dies, surfaces at the
next `check` as TrackingError, so training stops within a step.

Example:
    >>> rec = Recorder()                                      # doctest: +SKIP
    >>> rec.start("sqlite:////tmp/x/mlflow.db", "demo", "my-run")  # doctest: +SKIP
    >>> rec.log_eval(100, {"val_accuracy": 0.9})              # doctest: +SKIP
    >>> rec.end("FINISHED")  # waits for all of it          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab import helper_env
from cnnlab.record.store import REPO_ROOT
from cnnlab.record.worker import receive_fd, send


def close_seconds() -> float:
    """How long the helper may take for its last calls: a server outage is waited out (then spooled)."""
    from cnnlab.record.store import OUTAGE_ENV, OUTAGE_SECONDS

    return float(os.environ.get(OUTAGE_ENV, OUTAGE_SECONDS)) + 60


class TrackingError(RuntimeError):
    """Tracking failed: a call failed in the helper process, or the helper died. Starts with the cause."""


class Recorder:
    """The training process's side of a run's MLflow record.

    `waited` is how long the caller was held up by tracking, its real cost to the run;
    `seconds` is the time MLflow itself took in the helper (import included).
    """

    enabled = True

    def __init__(self):
        env = helper_env()
        self._proc = subprocess.Popen([sys.executable, "-m", "cnnlab.record.worker"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.waited = self.seconds = 0.0
        self.started = self.closed = False
        self.run_id: str | None = None
        self.uri: str | None = None
        self.error: str | None = None  # the first failure the helper reported
        self.spooled: str | None = None  # the folder keeping what the server could not take (cnnlab.spool)

    # --- the run's life, in order -------------------------------------------------------------
    def start(self, uri: str, experiment: str, run_name: str, parent_run_id: str | None = None,
              resume: dict | None = None) -> None:
        """Open the store and create the run (a failure surfaces at `confirm` or `check`).

        `resume` ({"run_id": <id or "last">, "params": ..., "checkpoints": <root>}): reopen that
        run instead (`Tracker.resume`); a config that differs from its params fails at `confirm`.
        """
        self.started, self.uri = True, uri
        self._send("start", uri, experiment, run_name, parent_run_id, resume)

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
        """Raise TrackingError if the helper died or reported a failed call (cheap: call it every step)."""
        if self.error:
            raise TrackingError(self.error)
        if self._proc.poll() is not None:
            self.error = f"the MLflow helper process died ({exit_cause(self._proc.returncode)})"
            raise TrackingError(self.error)
        fd = self._proc.stdout.fileno()
        if select.select([fd], [], [], 0)[0]:
            self._receive()  # only an error report can arrive unasked
            raise TrackingError(self.error)

    def log_final(self, step: int, metrics: dict[str, float], tags: dict[str, str]) -> None:
        self._call("log_metrics", step, metrics)
        self._call("set_tags", tags)

    def log_outputs(self, folder: Path, figures: list) -> None:
        """Render `figures` ((fn, *args) into `folder`) in the helper, upload the folder, then delete it."""
        for fn, *args in figures:
            self._send("run", fn, args, {})
        self._call("log_artifacts", str(folder))
        self._send("run", shutil.rmtree, (folder,), {"ignore_errors": True})

    def log_model(self, folder: Path, step: int, register_as: str | None) -> None:
        """Upload the MLflow model saved in `folder` as the run's logged model "model", then delete it."""
        self._call("log_model", str(folder), "model", step, register_as)
        self._send("run", shutil.rmtree, (folder,), {"ignore_errors": True})

    def end(self, status: str) -> None:
        """Finish what is queued, then end the run with `status` (FAILED if a call failed)."""
        if self.closed:
            return
        try:
            self.flush()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._send("end", status)
            self._last_reply()
            self.close()

    def end_anyway(self, status: str, cause: BaseException) -> None:
        """End a run that is failing (`cause`): through the helper, or from this process if it died."""
        if self.closed:
            return
        from cnnlab.errors import ConfigError, Diverged

        if status == "FAILED" and not isinstance(cause, (Diverged, ConfigError, TrackingError)):
            self._call("set_tags", {"error": f"{type(cause).__name__}: {str(cause)[:4000]}"})  # say why
        try:
            self.end(status)
        except Exception:
            pass  # the failure being raised matters more; the helper marks the run FAILED if it can
        if self.started and self.run_id and self._proc.returncode not in (0, None):
            reason = self.error or f"{type(cause).__name__}: {str(cause)[:300]}"
            if not mark_ended(self.uri, self.run_id, status, reason):
                self.error = f"{reason}; the store could not be told either: run {self.run_id} stays RUNNING"

    def close(self) -> None:
        """Stop the helper; a run it started and nobody ended is marked KILLED."""
        self.closed = True
        if not self.started:
            self._proc.kill()  # no run to end (e.g. the data failed to load): don't wait for MLflow's import
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:  # the last calls may be waiting out a server outage (cnnlab.spool)
            self._proc.wait(timeout=close_seconds())
        except subprocess.TimeoutExpired:
            self._proc.kill()

    # --- the channel ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until everything sent is done; raise TrackingError for the first call that failed."""
        started = time.perf_counter()
        try:
            self._send("flush")
            while (reply := self._receive()) is None:
                pass  # an error report came first: the flush reply follows it
            error, self.run_id, self.seconds, self.spooled = reply
        finally:
            self.waited += time.perf_counter() - started
        if error:
            raise TrackingError(error)

    def _last_reply(self) -> None:
        """The helper's answer to `end`: whether the end, too, had to be spooled. Bounded; any failure ignored."""
        fd, error = self._proc.stdout.fileno(), self.error
        try:
            deadline = time.monotonic() + close_seconds()
            while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                reply = self._receive()
                if reply is not None:
                    self.spooled = reply[3] or self.spooled
                    return
        except (TrackingError, OSError, ValueError):
            self.error = error  # a helper gone after the end is no new failure

    def _receive(self):
        """The next message: a flush reply (returned), or an error report (kept in `error`; None)."""
        try:
            kind, *rest = receive_fd(self._proc.stdout.fileno())
        except (EOFError, OSError, ValueError):
            self.error = self.error or f"the MLflow helper process died ({exit_cause(self._proc.wait())})"
            raise TrackingError(self.error) from None
        if kind == "error":
            self.error = self.error or rest[0]
            return None
        return rest

    def _call(self, method: str, *args) -> None:
        self._send("call", method, args)

    def _send(self, *message) -> None:
        try:
            send(self._proc.stdin, message)
        except (OSError, ValueError):
            pass  # the helper has died (the next check says so) or was closed


class NullRecorder(Recorder):
    """`tracking=none`: the same calls, recording nothing."""

    enabled = False

    def __init__(self):
        self.waited = self.seconds = 0.0
        self.run_id = self.uri = self.error = self.spooled = None

    def _send(self, *message) -> None:
        pass

    def flush(self) -> None:
        pass

    def check(self) -> None:
        pass

    def end(self, status: str) -> None:
        pass

    def end_anyway(self, status: str, cause: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


def exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def mark_ended(uri: str, run_id: str, status: str, error: str) -> bool:
    """End a run from this process when its helper cannot; False if the store cannot take it either."""
    from cnnlab.record.store import quick_http
    from cnnlab.record.tracking import Tracker

    try:
        with quick_http():
            tracker = Tracker.attach(uri, run_id)
            tracker.set_tags({"error": error})
            tracker.end(status)
        return True
    except Exception:
        return False


# --- what a run's record holds ----------------------------------------------------------------------
def git_state() -> dict[str, str]:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"versions.python": platform.python_version()}
    for pkg in ("cnnlab", "keras", "tensorflow", "jax", "torch", "mlflow", "hydra-core", "omegaconf", "numpy"):
        try:
            out[f"versions.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_tags(run, data, overrides, choices, keras) -> dict[str, str]:
    from cnnlab.backend import device_name
    from cnnlab.sweep.cluster import job_cpus, where_tags

    return {
        "hydra.overrides": " ".join(overrides) or "(none)", **git_state(), **versions(),
        "keras.backend": keras.backend.backend(), "device": device_name(), "data.source": data.source,
        **({"class_names": json.dumps(list(data.class_names))[:8000]} if getattr(data, "class_names", None) else {}),
        **({"normalize": json.dumps({"mean": data.normalize[0], "std": data.normalize[1]})}
           if getattr(data, "normalize", None) else {}),
        "dtype_policy": keras.config.dtype_policy().name,
        "model.params": str(run.arch.total_params),
        "process.pid": str(os.getpid()),  # which sweep worker ran the job (memory is per process)
        **({"cnnlab.sweep.job": os.environ["CNNLAB_SWEEP_JOB"]} if "CNNLAB_SWEEP_JOB" in os.environ else {}),
        **({"job.cpus": str(job_cpus())} if job_cpus() else {}),  # the thread pools' size (cnnlab.sweep.cluster)
        **where_tags(),
        **{f"choice.{group}": option for group, option in (choices or {}).items()},
    }


def run_files(run) -> Path:
    """A new folder with config.yaml and shape_table.txt (the model goes up apart: `Recorder.log_model`)."""
    from omegaconf import OmegaConf

    from cnnlab.model.builder import shape_table

    folder = Path(tempfile.mkdtemp(prefix="cnnlab-"))
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run.resolved)))
    (folder / "shape_table.txt").write_text(shape_table(run.arch) + "\n")
    return folder
