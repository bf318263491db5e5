"""`hydra/launcher=cnnlab`: sweep jobs on persistent worker processes that fail alone and stop cleanly.

`n_jobs` workers (`cnnlab.sweep.worker`) each run one job at a time and are reused, so
TensorFlow is imported once per worker. What the joblib launcher could not do:

- A worker that dies (e.g. the OOM killer's SIGKILL) fails only its own job: its child
  run is ended FAILED with the cause in the `error` tag (a FAILED child is created if the
  job had not started one), a new worker takes its place and the remaining jobs run.
- Ctrl-C, or SIGINT/SIGTERM to this process alone, is forwarded to the workers (which end
  their runs KILLED), any worker still alive after `stop_seconds` is killed, every open
  child is ended KILLED, the parent gets its summary and ends KILLED; exit 130 (143 for SIGTERM).
- Workers die with this process (PR_SET_PDEATHSIG); a guard process ends the parent
  (see `cnnlab.sweep.guard`).

Example:
    python run.py -m init=he,glorot trainer.seed=1,2 hydra.launcher.n_jobs=2
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import helper_env
from cnnlab.errors import Interrupted  # a KeyboardInterrupt: no `except Exception` swallows it
from cnnlab.sweep.cluster import JOB_ENV, PARENT_ENV

log = logging.getLogger(__name__)
JOB_TAG = "cnnlab.sweep.job"  # set on a job's child run (train.run_tags) from JOB_ENV


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@dataclass
class Job:
    index: int
    overrides: list[str]
    launcher: object  # the Hydra launcher plugin (its config and context)
    shared: bytes  # (hydra_context, task_function, base config, Singleton state), cloudpickled once per launch

    @property
    def payload(self) -> bytes:
        return pickle.dumps((self.index, self.overrides, self.shared))

    def config(self) -> DictConfig:
        """The job's composed config, hydra node included (as the worker composes it)."""
        return compose_job(self.launcher.hydra_context, self.launcher.config, self.overrides, self.index)


def compose_job(hydra_context, config: DictConfig, overrides: list[str], index: int) -> DictConfig:
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.id = f"{job_config.hydra.job.name}_{index}"
        job_config.hydra.job.num = index
    return job_config


class Worker:
    """One `cnnlab.sweep.worker` process: jobs go in on its stdin, results come back on a pipe."""

    def __init__(self):
        env = helper_env()
        read_fd, write_fd = os.pipe()
        # its own session: a terminal's Ctrl-C reaches only the launcher, which forwards it once
        self.proc = subprocess.Popen([sys.executable, "-m", "cnnlab.sweep.worker", str(os.getpid()), str(write_fd)],
                                     stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env, start_new_session=True)
        os.close(write_fd)
        self.results = os.fdopen(read_fd, "rb")
        self.job: Job | None = None

    def send(self, job: Job) -> bool:
        self.job = job
        try:
            self.proc.stdin.write(job.payload)
            self.proc.stdin.flush()
            return True
        except OSError:
            return False  # it died while idle

    def receive(self) -> JobReturn:
        index, ret = pickle.load(self.results)
        assert index == self.job.index, (index, self.job.index)
        self.job = None
        return ret

    def cause_of_death(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # its result stream broke but it lives on: end it
            self.proc.kill()
            code = self.proc.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"sweep worker {self.proc.pid} died: {how}"

    def close(self) -> None:
        for stream in (self.proc.stdin, self.results):
            try:
                stream.close()
            except OSError:
                pass


class Pool:
    """Up to `size` workers, started as jobs need them; a dead one is replaced by the next dispatch."""

    def __init__(self, size: int):
        self.size, self.workers = max(1, size), []
        atexit.register(self.close)

    def dispatch(self, pending: deque) -> None:
        while pending:
            idle = next((w for w in self.workers if w.job is None), None)
            if idle is None and len(self.workers) < self.size:
                idle = Worker()
                self.workers.append(idle)
            if idle is None:
                return
            job = pending.popleft()
            if not idle.send(job):  # it died while idle (its exit is not the job's fault): use a fresh one
                idle.job = None
                self.remove(idle)
                pending.appendleft(job)

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.job is not None]

    def remove(self, worker: Worker) -> None:
        worker.close()
        self.workers.remove(worker)

    def stop(self, signum: int, seconds: float) -> None:
        """Forward `signum`, give the workers `seconds` to end their runs, then SIGKILL the rest."""
        alive = [w for w in self.workers if w.proc.poll() is None]
        for w in alive:
            w.proc.send_signal(signum)
        deadline = time.monotonic() + seconds
        for w in alive:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=10)
        for w in list(self.workers):
            self.remove(w)

    def close(self) -> None:
        """End of the sweep: idle workers exit at their stdin's end; SIGKILL any that lingers."""
        for w in self.workers:
            w.close()
        deadline = time.monotonic() + 10
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
        self.workers = []


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Run the jobs on the launcher's pool; one JobReturn per job, in order (Hydra's Launcher.launch)."""
    import cloudpickle  # pickles run.py's task function, which lives in __main__ (plain pickle cannot)

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"cnnlab launcher: {len(job_overrides)} jobs on {launcher.n_jobs} worker processes, "
             f"sweep output dir: {sweep_dir}")
    # composed per job in the worker, as the joblib launcher does: in parallel, and only when the job starts
    shared = cloudpickle.dumps((launcher.hydra_context, launcher.task_function, launcher.config,
                                Singleton.get_state()))
    jobs = []
    for i, overrides in enumerate(job_overrides):
        log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
        jobs.append(Job(initial_job_idx + i, list(overrides), launcher, shared))
    if launcher.pool is None:
        launcher.pool = Pool(launcher.n_jobs)
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_jobs(launcher.pool, jobs)
    except Interrupted as e:
        stop_sweep(launcher.pool, e.signum, launcher.stop_seconds)
    except BaseException:
        launcher.pool.stop(signal.SIGKILL, 0)  # the sweep's callback ends the parent FAILED at exit
        raise
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def run_jobs(pool: Pool, jobs: list[Job]) -> list[JobReturn]:
    pending, results = deque(jobs), {}
    while pending or pool.busy():
        pool.dispatch(pending)
        busy = pool.busy()
        ready, _, _ = select.select([w.results for w in busy], [], [], 1.0)
        for worker in busy:
            if worker.results in ready:
                job = worker.job
                try:
                    results[job.index] = worker.receive()
                except Exception:  # end of stream: the worker died mid-job
                    results[job.index] = lose_job(pool, worker, job)
    return [results[job.index] for job in jobs]


def lose_job(pool: Pool, worker: Worker, job: Job) -> JobReturn:
    """A job whose worker died: record it FAILED with the cause; the sweep goes on without that worker."""
    cause = worker.cause_of_death()
    pool.remove(worker)
    return job_lost(job.index, job.overrides, cause, job.config())


def job_lost(index: int, overrides: list[str], cause: str, config: DictConfig) -> JobReturn:
    """Any launcher's job that died with its process (`config`: the job's composed config): recorded
    FAILED with `cause`, and the result that lets the sweep go on."""
    print(f"error: {' '.join(filter_overrides(overrides))}: {cause}", file=sys.stderr, flush=True)
    try:
        record_lost_job(index, list(overrides), cause)
    except Exception as e:  # the store is unusable: the summary will miss this job, the sweep goes on
        print(f"error: could not record the lost job in MLflow: {type(e).__name__}: {e}", file=sys.stderr)
    task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    # COMPLETED with no value, as cnnlab.run.job.run_job returns for a failed job: Hydra's sweepers go on
    return JobReturn(overrides=list(overrides), cfg=task_cfg, hydra_cfg=config, working_dir=os.getcwd(),
                     task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED, _return_value=None)


def record_lost_job(index: int, overrides: list[str], cause: str) -> None:
    """End the job's child run FAILED with `cause`, or create a FAILED child if it has none."""
    from cnnlab.record.tracking import Tracker
    from cnnlab.sweep import callback as sweep

    callback = sweep.ACTIVE
    if callback is None or callback.tracker is None:
        return  # tracking disabled
    client, parent = callback.tracker.client, callback.tracker.run_id
    # the job's MLflow helper ends its run KILLED when the worker dies; let it finish first
    deadline = time.monotonic() + 30
    while job_helpers(index, parent) and time.monotonic() < deadline:
        time.sleep(0.5)
    name = sweep.child_name(overrides, callback.keys) or f"job {index}"
    run = find_child(client, parent, index, name)
    if run is None:
        tags = {"hydra.overrides": " ".join(overrides), "error": cause, JOB_TAG: str(index)}
        Tracker.start(callback.uri, callback.experiment, name, tags=tags, parent_run_id=parent).end("FAILED")
        return
    client.set_tag(run.info.run_id, "error", cause)
    if run.info.status != "FINISHED":
        client.set_terminated(run.info.run_id, "FAILED")


def find_child(client, parent: str, index: int, name: str):
    """The job's child run: by its job tag, else (killed before tagging) an unfinished one of its name."""
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.start_time DESC"], max_results=10000)
    tagged = [r for r in children if r.data.tags.get(JOB_TAG) == str(index)]
    untagged = [r for r in children if JOB_TAG not in r.data.tags and r.info.run_name == name
                and r.info.status != "FINISHED"]
    return (tagged or untagged or [None])[0]


def job_helpers(index: int, parent: str) -> list[int]:
    """PIDs of the MLflow helper processes (cnnlab.record.worker) of this sweep's job `index` (Linux)."""
    marks = {f"{JOB_ENV}={index}".encode(), f"{PARENT_ENV}={parent}".encode()}
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
                if b"cnnlab.record.worker" in cmdline and marks <= set(Path(entry.path, "environ").read_bytes()
                                                                          .split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
    return found


def stop_sweep(pool: Pool, signum: int, seconds: float) -> None:
    """Ctrl-C or SIGTERM: stop the workers, end open runs KILLED, summarize, one line, exit 128+signum."""
    from cnnlab.sweep import callback as sweep

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # the clean-up below is bounded; a second Ctrl-C must not cut it short
    name = signal.Signals(signum).name
    pool.stop(signum, seconds)
    if sweep.ACTIVE is not None:
        sweep.ACTIVE.finish("KILLED", f"sweep interrupted by {name}")
    print(f"error: sweep interrupted by {name}: workers stopped, open MLflow runs ended KILLED", file=sys.stderr)
    sys.stdout.flush()
    sys.exit(128 + signum)
