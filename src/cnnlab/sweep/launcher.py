"""`hydra/launcher=cnnlab`: sweep jobs on reused worker processes; a worker that dies fails only its own job.

`n_jobs` workers (`multiprocessing`, spawn) each run one job at a time and are reused, so TensorFlow is
imported once per worker, as with Hydra's joblib launcher. Why not that launcher: when one of loky's
workers dies (the OOM killer's SIGKILL), loky terminates the other workers and fails every job still
pending, so the whole sweep stops. Here each worker has its own pipe, and the launcher waits on the
pipes and the processes' sentinels (`multiprocessing.connection.wait`):

- A worker that dies fails only its job (`cnnlab.sweep.lost`); the next job gets a new worker.
- Ctrl-C, or SIGINT/SIGTERM to this process alone, is forwarded to the workers (their jobs end their
  runs KILLED), a worker still alive after `stop_seconds` is killed, and the sweep exits 130 (143);
  the sweep's callback ends the parent KILLED.
- A worker whose launcher dies (SIGKILL) stops its job as on SIGTERM and exits.

Example:
    python run.py -m init=he,glorot trainer.seed=1,2 hydra.launcher.n_jobs=2
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, open_dict

from cnnlab.errors import Interrupted  # a KeyboardInterrupt: no `except Exception` swallows it
from cnnlab.sweep.lost import job_lost

log = logging.getLogger(__name__)


def compose_job(hydra_context, config: DictConfig, overrides: list[str], index: int) -> DictConfig:
    """A job's config as every Hydra launcher composes it (`load_sweep_config`), numbered."""
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.id = f"{job_config.hydra.job.name}_{index}"
        job_config.hydra.job.num = index
    return job_config


# --- in the worker process ------------------------------------------------------------------------
def _stop_with_launcher() -> None:
    """SIGTERM this worker when its launcher dies: the job in progress ends its run KILLED, then it exits."""
    sentinel = multiprocessing.parent_process().sentinel

    def watch():
        wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="cnnlab-launcher-watch").start()


def serve(conn) -> None:
    """A worker's loop: compose and run each job it receives, as Hydra's launchers do, and send back its result."""
    import gc

    gc.disable()  # no collections while the first job imports TensorFlow (cnnlab.backend.freeze_imports)
    import cloudpickle  # run.py's task function lives in __main__: only cloudpickle ships it

    os.setsid()  # its own session: a terminal's Ctrl-C reaches only the launcher, which forwards it once
    _stop_with_launcher()
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job

    try:
        while True:
            try:
                index, overrides, shared = conn.recv()
            except (EOFError, OSError):
                break  # the launcher has no more jobs, or is gone
            hydra_context, task_function, config, singleton_state = cloudpickle.loads(shared)
            setup_globals()
            Singleton.set_state(singleton_state)
            job_config = compose_job(hydra_context, config, overrides, index)
            HydraConfig.instance().set_config(job_config)
            ret = run_job(hydra_context=hydra_context, task_function=task_function, config=job_config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            try:  # cloudpickle: the job's Hydra config holds Hydra's structured config classes
                data = cloudpickle.dumps(ret)
            except Exception:  # e.g. an exception object that cannot be pickled: send its text
                ret.return_value = RuntimeError(repr(ret._return_value))
                data = cloudpickle.dumps(ret)
            conn.send_bytes(data)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM forwarded by the launcher: the job's run ended KILLED
        sys.stdout.flush()
        os._exit(130)
    sys.stdout.flush()
    os._exit(0)  # skip tearing down TensorFlow: the runs are recorded


# --- in the launcher --------------------------------------------------------------------------------
class Worker:
    def __init__(self):
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        self.conn, theirs = context.Pipe()
        self.proc = context.Process(target=serve, args=(theirs,), daemon=True, name="cnnlab-sweep-worker")
        self.proc.start()
        theirs.close()
        self.job: tuple | None = None  # (index, overrides) in progress

    def cause_of_death(self) -> str:
        self.proc.join(timeout=10)
        if self.proc.exitcode is None:  # its pipe broke but it lives on: end it
            self.proc.kill()
            self.proc.join()
        code = self.proc.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"sweep worker {self.proc.pid} died: {how}"


class Pool:
    """Up to `size` workers, started as jobs need them; a dead one is replaced at the next dispatch."""

    def __init__(self, size: int):
        self.size, self.workers = max(1, size), []
        atexit.register(self.close)

    def dispatch(self, pending: deque, shared: bytes) -> None:
        while pending:
            idle = next((w for w in self.workers if w.job is None), None)
            if idle is None and len(self.workers) < self.size:
                idle = Worker()
                self.workers.append(idle)
            if idle is None:
                return
            job = pending.popleft()
            try:
                idle.conn.send((*job, shared))
                idle.job = job
            except OSError:  # it died while idle (not the job's fault): a fresh one takes the job
                self.remove(idle)
                pending.appendleft(job)

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.job is not None]

    def remove(self, worker: Worker) -> None:
        worker.conn.close()
        self.workers.remove(worker)

    def stop(self, signum: int, seconds: float) -> None:
        """Forward `signum`, give the workers `seconds` to end their runs, then SIGKILL the rest."""
        alive = [w for w in self.workers if w.proc.is_alive()]
        for w in alive:
            os.kill(w.proc.pid, signum)
        deadline = time.monotonic() + seconds
        for w in alive:
            w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=10)
        for w in list(self.workers):
            self.remove(w)

    def close(self) -> None:
        """End of the sweep: idle workers exit at their pipe's end; SIGKILL any that lingers."""
        for w in self.workers:
            w.conn.close()
        deadline = time.monotonic() + 10
        for w in self.workers:
            w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
        self.workers = []


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Run the jobs on the launcher's pool; one JobReturn per job, in order (Hydra's Launcher.launch)."""
    jobs = [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
    results = _launch(launcher, deque(jobs), f"{len(jobs)} jobs")
    return [results[index] for index, _ in jobs]


def launch_stream(launcher, next_job, on_result) -> None:
    """Keep every worker busy with jobs asked one at a time (an Optuna study: `hydra/sweeper=cnnlab_optuna`).

    Whenever a worker is free, `next_job()` gives the next `(index, overrides)`, or None: no more jobs
    (it is not asked again). `on_result(index, JobReturn)` gets each job's result as soon as it ends.
    """
    _launch(launcher, deque(), "jobs as they are asked", next_job, on_result)


def _launch(launcher, pending: deque, what: str, next_job=None, on_result=None) -> dict[int, JobReturn]:
    import cloudpickle

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"cnnlab launcher: {what} on {launcher.n_jobs} worker processes, sweep output dir: {sweep_dir}")
    # composed per job in the worker, as the joblib launcher does: in parallel, and only when the job starts
    shared = cloudpickle.dumps((launcher.hydra_context, launcher.task_function, launcher.config,
                                Singleton.get_state()))
    for index, overrides in pending:
        log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
    if launcher.pool is None:
        launcher.pool = Pool(launcher.n_jobs)
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = run_jobs(launcher, pending, shared, next_job, on_result)
    except Interrupted as e:
        stop_sweep(launcher.pool, e.signum, launcher.stop_seconds)
    except BaseException:
        launcher.pool.stop(signal.SIGKILL, 0)  # the sweep's callback ends the parent FAILED at exit
        raise
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return results


def run_jobs(launcher, pending: deque, shared: bytes, next_job=None, on_result=None) -> dict[int, JobReturn]:
    import cloudpickle

    pool, results = launcher.pool, {}
    while True:
        while next_job is not None and len(pending) + len(pool.busy()) < pool.size:  # a free worker: ask a job
            job = next_job()
            if job is None:
                next_job = None
                break
            from cnnlab.config.guard import redact_text  # e.g. a PostgreSQL study storage's password

            log.info(f"\t#{job[0]} : {redact_text(' '.join(filter_overrides(job[1])))}")
            pending.append(job)
        if not (pending or pool.busy()):
            break
        pool.dispatch(pending, shared)
        busy = pool.busy()
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0))
        for worker in busy:
            if worker.conn not in ready and worker.proc.sentinel not in ready:
                continue
            index, overrides = worker.job
            try:
                results[index] = cloudpickle.loads(worker.conn.recv_bytes())
                worker.job = None
            except (EOFError, OSError):  # the worker died mid-job
                cause = worker.cause_of_death()
                pool.remove(worker)
                config = compose_job(launcher.hydra_context, launcher.config, overrides, index)
                results[index] = job_lost(overrides, cause, config)
            if on_result is not None and index in results:
                on_result(index, results[index])
    return results


def stop_sweep(pool: Pool, signum: int, seconds: float) -> None:
    """Ctrl-C or SIGTERM: stop the workers, one line, exit 128+signum (the callback then ends the parent KILLED)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # the clean-up below is bounded; a second Ctrl-C must not cut it short
    name = signal.Signals(signum).name
    pool.stop(signum, seconds)
    print(f"error: sweep interrupted by {name}: workers stopped, open MLflow runs ended KILLED", file=sys.stderr)
    sys.stdout.flush()
    sys.exit(128 + signum)
