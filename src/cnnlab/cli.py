"""What `run.py` does with a composed config, and how errors reach the user.

A bad config, a bad override or a missing data file ends in one line on
stderr naming the key and the value, and exit code 2; no traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

from cnnlab.errors import ConfigError

PARENT_ENV = "CNNLAB_SWEEP_PARENT_RUN_ID"  # set by cnnlab.sweep's callback for the jobs it launches

EXIT_CONFIG = 2  # bad config, bad override, missing or corrupt data
EXIT_DIVERGED = 3  # the run was recorded, as FAILED: its loss became NaN/inf
EXIT_TRACKING = 4  # tracking broke mid-run (store failed, helper died): training stopped, run FAILED


def fail(message: str, code: int = EXIT_CONFIG):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def guard_hydra_errors(hydra_main) -> None:
    """Run a `@hydra.main` function; Hydra's own override/composition errors become one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra prints composition errors over several lines and exits 1; let them reach us instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except ConfigError as e:  # raised outside a job, e.g. the sweep's store cannot be used
        fail(str(e))
    except ValueError as e:
        if not _raised_by_hydra(e):
            raise
        fail(one_line(e))  # command-line misuse, e.g. `-m` together with `--cfg`
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e).split("Config search path")[0]  # Hydra appends its search path to lookups
        cause = e.__cause__
        detail = f" ({str(cause).splitlines()[0]})" if isinstance(cause, OmegaConfBaseException) else ""
        fail(one_line(message) + detail)


def hydra_context() -> tuple[list[str], dict, bool]:
    """The job's overrides, its group choices, and whether it is one job of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], {}, False
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return list(hc.overrides.task), choices, hc.mode == RunMode.MULTIRUN


def _raised_by_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    return f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def run_job(cfg):
    """The body of one Hydra job: validate, then dry-run or train.

    Returns the final validation accuracy: the objective a hyperparameter sweeper
    maximises (the test set stays out of model selection).

    A single run ends a failure with one line and a non-zero exit. In a sweep the
    job's failure is recorded (a FAILED child run) and the sweep goes on.
    """
    from cnnlab.schema import check_config

    overrides, choices, in_sweep = hydra_context()
    try:
        run = check_config(cfg)
        if run.dry_run:
            return dry_run(cfg, run)
        from cnnlab.errors import Diverged
        from cnnlab.recorder import TrackingError
        from cnnlab.train import train

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # a killed job ends its MLflow run as KILLED
        name = sweep_child_name(overrides) if in_sweep else None
        try:
            return train(run, overrides, choices, parent_run_id=os.environ.get(PARENT_ENV) if in_sweep else None,
                         name=name, release=in_sweep)["val_accuracy"]
        except (Diverged, TrackingError) as e:
            message = str(e) if isinstance(e, Diverged) else f"tracking: {e}"
            if not in_sweep:
                fail(message, EXIT_DIVERGED if isinstance(e, Diverged) else EXIT_TRACKING)
            print(f"error: {' '.join(overrides)}: {message}", file=sys.stderr)
        except KeyboardInterrupt:
            if in_sweep:
                raise  # Ctrl-C stops the whole sweep
            fail("interrupted; the MLflow run (if any) is marked KILLED", 130)
    except ConfigError as e:
        if not in_sweep:
            fail(str(e))
        print(f"error: {' '.join(overrides)}: {e}", file=sys.stderr)
        record_failed_job(cfg, overrides, str(e))
    except Exception:
        if not in_sweep:
            raise
        traceback.print_exc()  # train() has marked the child run FAILED; the sweep goes on
    return None


def sweep_child_name(overrides: list[str]) -> str | None:
    from cnnlab.sweep import KEYS_ENV, child_name

    return child_name(overrides, os.environ.get(KEYS_ENV, "").split(","))


def record_failed_job(cfg, overrides: list[str], message: str) -> None:
    """A sweep job whose config is invalid still appears in MLflow, as a FAILED child run."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    from omegaconf import OmegaConf

    from cnnlab.tracking import Tracker, check_tracking, tracking_uri

    try:
        tracking = check_tracking(OmegaConf.to_container(cfg.tracking, resolve=True))
    except Exception:
        return  # the tracking config itself is broken: nowhere to record it
    if not tracking["enabled"]:
        return
    name = sweep_child_name(overrides) or "invalid config"
    tracker = Tracker.start(tracking_uri(tracking), tracking["experiment"], name, parent_run_id=parent,
                            tags={"hydra.overrides": " ".join(overrides), "error": message[:5000]})
    tracker.end("FAILED")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def dry_run(cfg, run) -> None:
    """Print the resolved config and the shape table, build the Keras model, check that it agrees."""
    from omegaconf import OmegaConf

    from cnnlab.builder import build_model, shape_table, verify_model

    print(OmegaConf.to_yaml(cfg, resolve=True))
    print(shape_table(run.arch))
    from cnnlab.memory import estimate

    print(estimate(run.arch, run.trainer["batch_size"]).summary(run.trainer["memory_budget_mb"]))
    from cnnlab.backend import keras

    model = build_model(run.arch, run.trainer["seed"])
    verify_model(run.arch, model)
    print(f"Keras {keras.__version__} ({keras.backend.backend()}) built the same model: "
          f"{model.count_params():,} parameters, output {tuple(model.output.shape)}")
