"""`train(run)`: one run end to end — data, model, fit, test, MLflow. Testable without Hydra.

Example:
    >>> from cnnlab.schema import check_config
    >>> run = check_config(cfg)                      # doctest: +SKIP
    >>> train(run)["test_accuracy"]                  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cnnlab.data.datasets import load_data
from cnnlab.errors import ConfigError
from cnnlab.model.builder import build_model, verify_model
from cnnlab.record.export import save_run_model
from cnnlab.record.logged_model import dataset_inputs
from cnnlab.record.plots import confusion_counts, confusion_matrix, run_figures
from cnnlab.record.recorder import NullRecorder, Recorder, TrackingError
from cnnlab.record.run_info import run_files, run_tags
from cnnlab.record.store import check_store, redact_uri
from cnnlab.record.tracking import flatten, tracking_uri
from cnnlab.run.checkpoints import checkpoint_root, latest, remove, restore
from cnnlab.run.devices import plain_copy
from cnnlab.run.devices import plan as plan_devices
from cnnlab.run.runlog import log_path, say


def run_name(run, choices: dict | None = None) -> str:
    """'ltfn5-he-sgd': model, init and optimizer, by their config-group choice where known."""
    choices = choices or {}
    init = choices.get("init") or run.resolved["init"]["hidden"]["scheme"]
    return f"{run.arch.name}-{init}-{run.optimizer.name}"


def compile_model(model, run, total_steps: int) -> None:
    from cnnlab.backend import keras
    from cnnlab.run.optimizers import make_optimizer

    # softmax cross-entropy on the logits the output layer emits (or on its softmax, if it has one)
    from_logits = run.arch.rows[-1].args.get("activation") != "softmax"
    model.compile(
        optimizer=make_optimizer(run.optimizer, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=run.trainer.jit_compile,
        steps_per_execution=run.trainer.steps_per_execution,
    )


def evaluate(model, data, from_logits: bool) -> tuple[dict, np.ndarray]:
    """Test loss and accuracy from one pass over the test set; also returns the predicted classes."""
    from cnnlab.backend import keras

    # predict_on_batch, not predict: no tf.data iterator, whose teardown waited up to ~5 s for its autotune thread
    outputs = np.concatenate([keras.ops.convert_to_numpy(model.predict_on_batch(np.asarray(data.x_test[i : i + 500])))
                              for i in range(0, len(data.x_test), 500)])
    losses = keras.losses.sparse_categorical_crossentropy(data.y_test, outputs, from_logits=from_logits)
    predicted = np.argmax(outputs, axis=-1)
    metrics = {
        "test_loss": float(np.mean(keras.ops.convert_to_numpy(losses))),
        "test_accuracy": float(np.mean(predicted == data.y_test)),
    }
    return metrics, predicted


def train(run, overrides: list[str] | tuple = (), choices: dict | None = None,
          name: str | None = None, release: bool = True) -> dict:
    """Train and evaluate one validated run; record it in MLflow unless `tracking.enabled` is false.

    Returns the final metrics. Raises `DataError` (before any run exists) for bad data,
    `ConfigError` for a store that cannot take the run (before training), `Diverged`
    when the loss becomes NaN/inf and `TrackingError` when tracking breaks mid-run
    (the run marked FAILED in both cases, by whichever process still can).
    """
    if run.tracking.enabled:
        check_store(tracking_uri(run.tracking))  # an unusable store: one line now, not after the imports
    parent_run_id = run.tracking.parent_run_id  # a sweep's job: its callback set it in the job's config
    if parent_run_id and run.resume:  # a resumed sweep: this job's earlier child decides (cnnlab.run.resume)
        from cnnlab.run.resume import sweep_job_plan

        done, run = sweep_job_plan(run, parent_run_id, overrides)
        if done is not None:
            say(f"{name or run_name(run, choices)}: FINISHED before the resume, not re-run "
                  f"(val_accuracy={done['val_accuracy']}), MLflow run {done['run_id']}")
            return done
    resume = resume_request(run)
    # the MLflow import starts now on the recorder's thread, beside the data loading
    recorder = Recorder() if run.tracking.enabled else NullRecorder()
    try:
        data = load_data(run.dataset)  # a data error must come before any MLflow run exists
        devices = plan_devices(run.trainer, len(data.x_train), len(data.x_val))  # so must a device request
    except BaseException:
        recorder.close()
        raise
    name = run.tracking.run_name or name or run_name(run, choices)
    tags = {"hydra.overrides": " ".join(overrides) or "(none)"}
    if run.trial:  # a trial of an Optuna study (hydra/sweeper=cnnlab_optuna)
        tags.update({"optuna.trial": str(run.trial.trial), "optuna.study": run.trial.study})
    recorder.start(tracking_uri(run.tracking), run.tracking.experiment, name, parent_run_id=parent_run_id,
                   resume=resume, tags=tags)
    try:
        if resume:  # a refused resume: one line before TensorFlow is even imported
            confirm(recorder, run)
        final = train_and_record(run, data, recorder, name, overrides, choices, devices)
    except BaseException as e:
        if isinstance(e, ConfigError):  # e.g. a store that refused a write: this run records the failure
            e.run_id = recorder.run_id
        if isinstance(e, KeyboardInterrupt) and recorder.run_id:
            e.resumable_at = (latest(checkpoint_folder(run, recorder)) or {}).get("step")
            if e.resumable_at is not None:
                recorder.tag({"resumable": "true"})  # python run.py <same overrides> resume=<run_id>
        recorder.end_anyway("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", e)
        if isinstance(e, KeyboardInterrupt):
            e.run_id = recorder.run_id  # the interrupt's line names the run (made, if at all, by now)
        release_keras_state()  # also for a single run: a stopped input pipeline could block the exit
        raise
    if release:  # a sweep worker runs the next job in this process; a single run just exits
        release_keras_state()
    if recorder.spooled:  # the server went away for minutes: what it missed waits on disk (cnnlab.spool)
        say(f"warning: tracking: the MLflow server at {redact_uri(recorder.uri)!r} stopped answering; "
            f"run {recorder.run_id} is complete in {recorder.spooled}: upload it with "
            f"`python -m cnnlab.spool {recorder.spooled}` once the server is back", error=True)
    result = (f"pruned at step {final['pruned_at_step']}, val_accuracy={final['val_accuracy']:.4f}"
              if "pruned_at_step" in final else
              f"test_accuracy={final['test_accuracy']:.4f} test_loss={final['test_loss']:.4f}")
    say(f"{name}: {result} ({final['steps']} steps in {final['train_seconds']:.1f} s)"
          + (f", MLflow run {recorder.run_id}" if recorder.enabled else ""))
    return {**final, "run_id": recorder.run_id}


def train_and_record(run, data, recorder, name: str, overrides, choices, devices=None) -> dict:
    """Build → fit → evaluate, telling `recorder` each step; the final metrics.

    `devices`: the run's `cnnlab.run.devices.DevicePlan` (None: one device). Data-parallel, the model is
    built, restored and trained in the plan's scope; a single-device copy is tested and logged.
    """
    from cnnlab.run.diagnostics import diagnostics_metrics, init_diagnostics
    from cnnlab.run.fit import fit, total_steps

    devices = devices or plan_devices(run.trainer)
    model, from_logits, keras = prepare_model(run, total_steps(run.trainer, len(data.x_train)), devices)
    recorder.log_setup(flatten(run.resolved), {**run_tags(run, data, overrides, choices, keras), **devices.tags()})
    if recorder.enabled:  # what the run trains, validates and tests on: the UI's Dataset column
        recorder.log_datasets(dataset_inputs(data, run.dataset.name))
    batch = slice(0, run.trainer.batch_size)
    with devices.scope():
        diag = init_diagnostics(model, np.asarray(data.x_train[batch]), data.y_train[batch], from_logits)
    recorder.log_diagnostics(diagnostics_metrics(diag))
    confirm(recorder, run)  # a store that cannot take the run fails here, before any training time is spent
    saves = checkpoint_folder(run, recorder)
    with devices.scope():
        start = restore(model, saves)["step"] if run.resume else 0
    if run.resume:
        recorder.tag({"resumed_from_step": str(start), "resumable": "false"})
        say(f"{name}: resuming MLflow run {recorder.run_id} at step {start} of "
            f"{total_steps(run.trainer, len(data.x_train))}")

    started = time.perf_counter()
    if run.trainer.log_every:  # train metrics come every log_every steps: evaluations add validation only
        def on_eval(step, metrics):
            recorder.log_eval(step, {k: v for k, v in metrics.items() if not k.startswith("train_")})
    else:
        on_eval = recorder.log_eval
    if run.trial:  # an Optuna trial: each evaluation's val_accuracy goes to it; pruned, training stops there
        from cnnlab.run.trial import TrialReporter

        on_eval = reporting(on_eval, TrialReporter(run.trial))
    with devices.scope():
        result = fit(model, data, run.trainer, on_eval=on_eval, check=recorder.check, start=start,
                     checkpoint_dir=saves, on_log=recorder.log_eval, augment=getattr(run, "augment", None))
    seconds = time.perf_counter() - started
    if devices.parallel:  # tested and logged as a plain single-device model
        model = plain_copy(model, run.arch, run.trainer.seed)
    final, predicted, tags = {"initial_loss": diag["initial_loss"]}, None, {}
    if result.diverged:
        tags = {"diverged": "true", "diverged_at_step": str(result.diverged.step)}
    elif result.stopped_at is not None and run.trial:  # pruned: a complete record of a run stopped by design
        tags = {"pruned": "true", "pruned_at_step": str(result.stopped_at)}
        final.update(train_seconds=seconds, **memory_mb())
    else:
        test, predicted = evaluate(model, data, from_logits)
        final.update(test, train_seconds=seconds, checkpoint_seconds=result.checkpoint_seconds, **memory_mb())
        if result.timer.images_per_second:
            final["images_per_second"] = result.timer.images_per_second
    if result.timer.first_step_unix:
        tags["timing.first_step_unix"] = f"{result.timer.first_step_unix:.3f}"
    if result.best:  # trainer.keep_best: which evaluation best.weights.h5 comes from
        tags.update({"best.step": str(result.best["step"]), f"best.{result.best['metric']}": str(result.best["value"])})
    recorder.log_final(result.steps, {k: v for k, v in final.items() if k != "initial_loss"}, tags)

    if recorder.enabled:
        folder = run_files(run)
        if result.best and predicted is not None:  # trainer.keep_best: the best evaluation's weights
            shutil.copy(saves / "best.weights.h5", folder / "best.weights.h5")
        log = log_path()
        if log and log.is_file():  # the job's log so far (Hydra's run.log): the run's console
            shutil.copy(log, folder / "run.log")
        figures = [(run_figures, folder, name, result.history, diag)]
        if predicted is not None:
            matrix = confusion_counts(data.y_test, predicted, run.dataset.num_classes)  # small to send
            figures.append((confusion_matrix, matrix, f"{name}: test set", folder / "confusion_matrix.png",
                            data.class_names))
        recorder.log_outputs(folder, figures)
        export = {}
        if predicted is not None and run.tracking.log_model:  # runs:/<id>/model, raw images in
            model_folder, export = save_run_model(model, data, from_logits)
            recorder.log_model(model_folder, result.steps, run.tracking.register_as)
        recorder.flush()
        # what MLflow cost: its own time (in the helper process) and the time the run waited for it
        recorder.log_final(result.steps, {"tracking_seconds": recorder.seconds,
                                          "tracking_wait_seconds": recorder.waited, **export}, {})
    if result.diverged:
        if saves:
            remove(saves)  # resuming would only diverge again
        raise result.diverged
    recorder.end("FINISHED")
    if saves:
        remove(saves)  # the run is whole: its checkpoints have served
    last_eval = result.history[-1] if result.history else {}
    out = {**final, "val_accuracy": last_eval.get("val_accuracy"), "steps": result.steps, "train_seconds": seconds}
    if "pruned_at_step" in tags:
        out["pruned_at_step"] = result.stopped_at
    return out


def reporting(on_eval, reporter):
    """`on_eval` that also reports val_accuracy to an Optuna trial; True (stop training) when it is pruned."""
    def report(step, metrics):
        on_eval(step, metrics)
        return reporter.report(step, metrics.get("val_accuracy"))

    return report


def confirm(recorder, run) -> None:
    """Wait until the run exists (or was reopened) and all so far is recorded; ConfigError if the store refused."""
    try:
        recorder.confirm()
    except TrackingError as e:
        raise store_error(e, tracking_uri(run.tracking)) from None


def checkpoint_folder(run, recorder) -> Path | None:
    """This run's checkpoint folder (None: untracked runs have no id to resume by)."""
    if not recorder.run_id:
        return None
    return checkpoint_root(run.trainer, tracking_uri(run.tracking)) / recorder.run_id


def resume_request(run):
    """The function that finds the run to reopen (`run.resume`), for the recorder; ConfigError for a resume that
    cannot be."""
    if not run.resume:
        return None
    if not run.tracking.enabled:
        raise ConfigError("resume", "needs tracking: the MLflow run to continue")
    root = checkpoint_root(run.trainer, tracking_uri(run.tracking))
    if run.resume != "last" and not latest(root / run.resume):
        raise ConfigError("resume", f"no checkpoint of run {run.resume} in {root} (finished, or never checkpointed)")
    from functools import partial

    from cnnlab.run.resume import find_run

    return partial(find_run, experiment=run.tracking.experiment, run_id=run.resume, params=flatten(run.resolved),
                   checkpoints=str(root))


def store_error(e: TrackingError, uri: str) -> ConfigError:
    """A store the helper could not use, as the one-line config error it is."""
    message = str(e)
    if message.startswith("ConfigError: "):  # the store's own check, already naming tracking.uri
        return ConfigError("", message[len("ConfigError: "):])
    return ConfigError("tracking.uri", f"cannot record to MLflow at {redact_uri(uri)!r}: {message[:300]}")


def release_keras_state() -> None:
    """Free this job's graphs and data before the next job in a reused sweep worker."""
    import sys

    if "keras" not in sys.modules:
        return  # interrupted before Keras was imported: nothing to free, and no import to start now
    from cnnlab.backend import keras

    keras.backend.clear_session()  # (with its one garbage collection: about half a second in a worker)


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (a reused sweep worker shows any growth)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out["rss_mb"] = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        pass  # not Linux
    return out


def prepare_model(run, total_steps: int, devices=None):
    """Seed, build, check against the shape table and compile; returns (model, from_logits, keras).

    `total_steps` is the run's budget in optimizer steps (a learning-rate schedule spans it);
    `devices` a data-parallel `DevicePlan`, in whose scope the model is built and compiled.
    """
    from cnnlab.backend import dtype_policy, freeze_imports, keras, make_deterministic, set_random_seed

    # sweep jobs share a worker: a fresh Keras state (the last job's memory was freed as it ended)
    keras.backend.clear_session(free_memory=False)
    freeze_imports()
    set_random_seed(run.trainer.seed)
    if run.trainer.deterministic:
        make_deterministic()
    keras.config.set_dtype_policy(dtype_policy(run.trainer.mixed_precision))  # global: reset for every job
    with devices.scope() if devices else contextlib.nullcontext():
        model = build_model(run.arch, run.trainer.seed)
        verify_model(run.arch, model)
        compile_model(model, run, total_steps)
    return model, run.arch.rows[-1].args.get("activation") != "softmax", keras
