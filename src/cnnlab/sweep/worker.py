"""One sweep worker process of `hydra/launcher=cnnlab`: runs the jobs its launcher sends, one at a time.

TensorFlow is imported once per worker and reused by its jobs. The launcher writes
`(index, overrides, context)` messages (pickle; the Hydra context inside, cloudpickled) to
the worker's stdin; the worker composes the job's config, runs it and answers with
`(index, JobReturn)` on the file descriptor named on its command line. It exits at
stdin's end, on SIGINT/SIGTERM (the job in progress ends its MLflow run KILLED), and at
once when its launcher dies (Linux `PR_SET_PDEATHSIG`), so no worker outlives its sweep.

Example (what `cnnlab.sweep.launcher` runs):
    python -m cnnlab.sweep.worker <launcher pid> <result fd>
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys

from cnnlab.sweep.cluster import JOB_ENV  # the job's index, set while it runs

PR_SET_PDEATHSIG = 1


def die_with_launcher(launcher_pid: int) -> None:
    """SIGKILL this process when the launcher dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # stdin's end still stops an idle worker
    if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
        os._exit(1)


def run_one(index: int, overrides: list[str], shared: bytes):
    """Compose and run one Hydra job here, as hydra_joblib_launcher does in its loky workers."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from cnnlab.sweep.launcher import compose_job

    hydra_context, task_function, config, singleton_state = pickle.loads(shared)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = compose_job(hydra_context, config, overrides, index)
    HydraConfig.instance().set_config(sweep_config)
    os.environ[JOB_ENV] = str(index)
    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    finally:
        os.environ.pop(JOB_ENV, None)


def reply(outbox, index: int, ret) -> None:
    import cloudpickle

    try:
        data = cloudpickle.dumps((index, ret))
    except Exception:  # e.g. an exception object that cannot be pickled: send its text
        ret.return_value = RuntimeError(repr(ret._return_value))
        data = cloudpickle.dumps((index, ret))
    outbox.write(data)
    outbox.flush()


def main() -> None:
    launcher_pid, result_fd = int(sys.argv[1]), int(sys.argv[2])
    die_with_launcher(launcher_pid)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    outbox = os.fdopen(result_fd, "wb")
    try:
        while True:
            try:
                index, overrides, shared = pickle.load(sys.stdin.buffer)
            except EOFError:
                break  # the launcher has no more jobs, or is gone
            reply(outbox, index, run_one(index, overrides, shared))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM forwarded by the launcher; the job's run is ended KILLED
        sys.stdout.flush()
        os._exit(130)
    sys.stdout.flush()
    os._exit(0)  # skip tearing down TensorFlow: the runs are recorded


if __name__ == "__main__":
    main()
