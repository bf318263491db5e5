"""The body of one Hydra job (`run.py` hands it the composed config): validate, then dry-run or train.

A single run ends a failure with one line and a non-zero exit (`cnnlab.cli`). In a
sweep, each job prints a line as it starts and as it ends, and a failed job is recorded
(a FAILED child run) while the sweep goes on.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace

from cnnlab.cli import EXIT_DIVERGED, EXIT_TRACKING, _cause, _interrupt, _redacted_traceback, fail
from cnnlab.errors import ConfigError
from cnnlab.run.runlog import say


def hydra_context() -> tuple[list[str], dict, bool, str | None]:
    """The job's overrides, its group choices, whether it is one job of a multirun, and its name there
    (its swept overrides: Hydra's `override_dirname`, which the sweep's callback restricts to them)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], {}, False, None
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    # a sweep's callback adds tracking.parent_run_id to every job: not one of the job's own overrides
    # and an Optuna sweeper adds +optuna.* (the job's trial, tagged on its run)
    overrides = [o for o in hc.overrides.task if not o.startswith(("tracking.parent_run_id=", "+optuna."))]
    multirun = hc.mode == RunMode.MULTIRUN
    return overrides, choices, multirun, (hc.job.override_dirname or None) if multirun else None


def run_job(cfg):
    """The body of one Hydra job: validate, then dry-run or train.

    Returns the final validation accuracy: the objective a hyperparameter sweeper
    maximises (the test set stays out of model selection).

    A single run ends a failure with one line and a non-zero exit. In a sweep the
    job's failure is recorded (a FAILED child run) and the sweep goes on.
    """
    from cnnlab.config.guard import redact_overrides, redact_text

    overrides, choices, in_sweep, name = hydra_context()
    overrides = redact_overrides(overrides)  # they are recorded (tags, run names) and printed
    return _run_job(cfg, overrides, choices, in_sweep, name and redact_text(name))


def _run_job(cfg, overrides: list[str], choices: dict, in_sweep: bool, name: str | None):
    from cnnlab.schema import check_config

    try:
        run = check_config(cfg)
        if run.dry_run:
            return dry_run(cfg, run)
        from cnnlab.errors import CheckpointError, Diverged
        from cnnlab.record.recorder import TrackingError
        from cnnlab.run.train import train

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # a killed job ends its MLflow run as KILLED
        if in_sweep:  # parallel jobs share the console: a line as each starts and ends, no progress between
            if run.trainer.verbose == "auto":
                run.trainer = replace(run.trainer, verbose=0)
            say(f"{name or 'job'}: started")
        try:
            final = train(run, overrides, choices, name=name, release=in_sweep)
            if "pruned_at_step" in final:  # the sweeper tells Optuna (cnnlab.run.trial)
                from cnnlab.run.trial import Pruned

                return Pruned(final["pruned_at_step"], final["val_accuracy"])
            return final["val_accuracy"]
        except (Diverged, TrackingError, CheckpointError) as e:
            message = str(e) if isinstance(e, Diverged) else \
                f"{'checkpoint' if isinstance(e, CheckpointError) else 'tracking'}: {e}"
            if not in_sweep:
                fail(message, EXIT_DIVERGED if isinstance(e, Diverged) else EXIT_TRACKING)
            say(f"error: {' '.join(overrides)}: {message}", error=True)
        # Ctrl-C or SIGTERM (Interrupted) goes on up: guard_hydra_errors prints it, a sweep stops
    except ConfigError as e:
        if not in_sweep:
            fail(str(e))
        from cnnlab.config.guard import redact_text

        say(redact_text(f"error: {' '.join(overrides)}: {e}"), error=True)
        if e.run_id is None:  # no run of this job exists yet (a bad config, a data error): make one
            record_failed_job(cfg, overrides, name, str(e))
    except Exception as e:
        if _cause(e, KeyboardInterrupt) is not None:  # cleanup failed while handling Ctrl-C: still Ctrl-C
            raise _cause(e, KeyboardInterrupt) from None
        sys.stderr.write(_redacted_traceback(*sys.exc_info()))  # (Hydra would print the raw overrides)
        if not in_sweep:
            sys.exit(1)
        # train() has marked the child run FAILED; the sweep goes on
    return None


def record_failed_job(cfg, overrides: list[str], name: str | None, message: str) -> None:
    """A sweep job whose config is invalid still appears in MLflow, as a FAILED child run."""
    from omegaconf import OmegaConf

    from cnnlab.config.guard import redact_text
    from cnnlab.record.tracking import Tracker, check_tracking, tracking_uri

    try:
        tracking = check_tracking(OmegaConf.to_container(cfg.tracking, resolve=True))
    except Exception:
        return  # the tracking config itself is broken: nowhere to record it
    if not tracking.enabled or not tracking.parent_run_id:
        return
    tracker = Tracker.start(tracking_uri(tracking), tracking.experiment, name or "invalid config",
                            parent_run_id=tracking.parent_run_id, tags={"hydra.overrides": " ".join(overrides)})
    tracker.end("FAILED", redact_text(message))


def dry_run(cfg, run) -> None:
    """Print the resolved config and the shape table, build the Keras model, check that it agrees."""
    from omegaconf import OmegaConf

    from cnnlab.data.describe import describe_data
    from cnnlab.model.builder import build_model, shape_table, verify_model

    say(OmegaConf.to_yaml(OmegaConf.create(run.resolved)))  # secrets redacted
    say(describe_data(run.dataset))  # split sizes, images per class: checked without decoding (DataError)
    if run.augment is not None:
        say(run.augment.describe())
    say(shape_table(run.arch))
    from cnnlab.model.memory import estimate
    from cnnlab.run.devices import plan

    devices = plan(run.trainer)  # (JAX's uneven last batches are checked when a run has loaded its data)
    say(devices.describe())
    say(estimate(run.arch, devices.per_device_batch).summary(run.trainer.memory_budget_mb)
        + (" (per device)" if devices.parallel else ""))
    from cnnlab.backend import keras

    model = build_model(run.arch, run.trainer.seed)
    verify_model(run.arch, model)
    say(f"Keras {keras.__version__} ({keras.backend.backend()}) built the same model: "
          f"{model.count_params():,} parameters, output {tuple(model.output.shape)}")
