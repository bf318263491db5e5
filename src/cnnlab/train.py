"""`train(run)`: one run end to end — data, model, fit, test, MLflow. Testable without Hydra.

Example:
    >>> from cnnlab.schema import check_config
    >>> run = check_config(cfg)                      # doctest: +SKIP
    >>> train(run)["test_accuracy"]                  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.builder import build_model, shape_table, verify_model
from cnnlab.data import load_data
from cnnlab.errors import ConfigError
from cnnlab.plots import confusion_counts, confusion_matrix, run_figures
from cnnlab.tracking import REPO_ROOT, NoTracker, flatten, tracking_uri
from cnnlab.tracking_worker import TrackingError, TrackingWorker


def run_name(run, choices: dict | None = None) -> str:
    """'ltfn5-he-sgd': model, init and optimizer, by their config-group choice where known."""
    choices = choices or {}
    init = choices.get("init") or run.resolved["init"]["hidden"]["scheme"]
    return f"{run.arch.name}-{init}-{run.optimizer['name']}"


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


def compile_model(model, run, total_steps: int) -> None:
    from cnnlab.backend import keras
    from cnnlab.optimizers import make_optimizer

    # softmax cross-entropy on the logits the output layer emits (or on its softmax, if it has one)
    from_logits = run.arch.rows[-1].args.get("activation") != "softmax"
    model.compile(
        optimizer=make_optimizer(run.optimizer, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=run.trainer["jit_compile"],
        steps_per_execution=run.trainer["steps_per_execution"],
    )


def evaluate(model, data, from_logits: bool) -> tuple[dict, np.ndarray]:
    """Test loss and accuracy from one pass over the test set; also returns the predicted classes."""
    from cnnlab.backend import keras

    # predict_on_batch, not predict: no tf.data iterator, whose teardown waited up to ~5 s for its autotune thread
    outputs = np.concatenate([keras.ops.convert_to_numpy(model.predict_on_batch(data.x_test[i : i + 500]))
                              for i in range(0, len(data.x_test), 500)])
    losses = keras.losses.sparse_categorical_crossentropy(data.y_test, outputs, from_logits=from_logits)
    predicted = np.argmax(outputs, axis=-1)
    metrics = {
        "test_loss": float(np.mean(keras.ops.convert_to_numpy(losses))),
        "test_accuracy": float(np.mean(predicted == data.y_test)),
    }
    return metrics, predicted


def train(run, overrides: list[str] | tuple = (), choices: dict | None = None,
          parent_run_id: str | None = None, name: str | None = None, release: bool = True) -> dict:
    """Train and evaluate one validated run; track it in MLflow unless `tracking.enabled` is false.

    Returns the final metrics. Raises `Diverged` (after marking the run FAILED)
    when the loss becomes NaN/inf, `DataError` (before any run exists) for bad data.
    """
    tracking = run.tracking["enabled"]
    # MLflow runs in a helper process, which starts importing it now, beside the data loading
    tracker = TrackingWorker() if tracking else NoTracker()
    try:
        data = load_data(run.dataset)  # a data error must come before any MLflow run exists
    except BaseException:
        tracker.close()
        raise
    name = run.tracking["run_name"] or name or run_name(run, choices)
    tracker.start(tracking_uri(run.tracking), run.tracking["experiment"], name, parent_run_id=parent_run_id)
    try:
        tracker.log_params(flatten(run.resolved))
        from cnnlab.diagnostics import diagnostics_metrics, init_diagnostics
        from cnnlab.fit import fit, total_steps

        model, from_logits, keras = prepare_model(run, total_steps(run.trainer, len(data.x_train)))
        tracker.set_tags(run_tags(run, data, overrides, choices, keras))
        batch = slice(0, run.trainer["batch_size"])
        diag = init_diagnostics(model, data.x_train[batch], data.y_train[batch], from_logits)
        tracker.log_metrics(0, diagnostics_metrics(diag))
        try:
            tracker.flush()  # a broken tracking URI fails here, before any training time is spent
        except TrackingError as e:
            raise ConfigError("tracking.uri", f"cannot record to MLflow at {tracking_uri(run.tracking)!r}: "
                                              f"{str(e)[:300]}") from None
        started = time.perf_counter()
        result = fit(model, data, run.trainer, on_eval=tracker.log_metrics)
        seconds = time.perf_counter() - started
        if tracking:
            artifacts = Path(tempfile.mkdtemp(prefix="cnnlab-"))
            tracker.run_in_background(run_figures, artifacts, name, result.history, diag)
        final, predicted = {"initial_loss": diag["initial_loss"]}, None
        if not result.diverged:
            test, predicted = evaluate(model, data, from_logits)
            final.update(test, train_seconds=seconds)
            if result.timer.images_per_second:
                final["images_per_second"] = result.timer.images_per_second
            final.update(memory_mb())
            tracker.log_metrics(result.steps, {k: v for k, v in final.items() if k != "initial_loss"})
        else:
            tracker.set_tags({"diverged": "true", "diverged_at_step": str(result.diverged.step)})
        if tracking:
            write_run_files(artifacts, run, model if predicted is not None else None)
            if predicted is not None:
                matrix = confusion_counts(data.y_test, predicted, run.dataset["num_classes"])  # small to send
                tracker.run_in_background(confusion_matrix, matrix, f"{name}: test set",
                                          artifacts / "confusion_matrix.png")
            tracker.log_artifacts(str(artifacts))
            tracker.run_in_background(shutil.rmtree, artifacts, ignore_errors=True)
            if result.timer.first_step_unix:
                tracker.set_tags({"timing.first_step_unix": f"{result.timer.first_step_unix:.3f}"})
            tracker.flush()
            # what MLflow cost: its own time (in the helper process) and the time the run waited for it
            tracker.log_metrics(result.steps, {"tracking_seconds": tracker.seconds,
                                               "tracking_wait_seconds": tracker.waited})
        if result.diverged:
            raise result.diverged
        tracker.end("FINISHED")
    except BaseException as e:
        try:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        except Exception:
            pass  # a tracking error is secondary to the one being raised
        release_keras_state()  # a failed sweep job's worker goes on to the next job; cheap next to a failure
        raise
    if release:  # a sweep worker runs the next job in this process; a single run just exits
        release_keras_state()
    print(f"{name}: test_accuracy={final['test_accuracy']:.4f} test_loss={final['test_loss']:.4f} "
          f"({result.steps} steps in {seconds:.1f} s)" + (f", MLflow run {tracker.run_id}" if tracking else ""))
    last_eval = result.history[-1] if result.history else {}
    return {**final, "val_accuracy": last_eval.get("val_accuracy"), "steps": result.steps,
            "run_id": tracker.run_id if tracking else None}


def release_keras_state() -> None:
    """Free this job's graphs and data before the next job in a reused sweep worker."""
    import gc

    from cnnlab.backend import keras

    keras.backend.clear_session()
    gc.collect()


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


def prepare_model(run, total_steps: int):
    """Seed, build, check against the shape table and compile; returns (model, from_logits, keras).

    `total_steps` is the run's budget in optimizer steps (a learning-rate schedule spans it).
    """
    from cnnlab.backend import dtype_policy, keras, make_deterministic

    keras.backend.clear_session()  # sweep jobs may share a worker process
    keras.utils.set_random_seed(run.trainer["seed"])
    if run.trainer["deterministic"]:
        make_deterministic()
    keras.config.set_dtype_policy(dtype_policy(run.trainer["mixed_precision"]))  # global: reset for every job
    model = build_model(run.arch, run.trainer["seed"])
    verify_model(run.arch, model)
    compile_model(model, run, total_steps)
    return model, run.arch.rows[-1].args.get("activation") != "softmax", keras


def run_tags(run, data, overrides, choices, keras) -> dict[str, str]:
    from cnnlab.backend import device_name

    return {
        "hydra.overrides": " ".join(overrides) or "(none)", **git_state(), **versions(),
        "keras.backend": keras.backend.backend(), "device": device_name(), "data.source": data.source,
        "dtype_policy": keras.config.dtype_policy().name,
        "model.params": str(run.arch.total_params),
        "process.pid": str(os.getpid()),  # which sweep worker ran the job (memory is per process)
        **({"cnnlab.sweep.job": os.environ["CNNLAB_SWEEP_JOB"]} if "CNNLAB_SWEEP_JOB" in os.environ else {}),
        **{f"choice.{group}": option for group, option in (choices or {}).items()},
    }


def write_run_files(folder: Path, run, model=None) -> None:
    """config.yaml, shape_table.txt, and the model when training finished (`tracking.log_model`)."""
    from omegaconf import OmegaConf

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run.resolved)))
    (folder / "shape_table.txt").write_text(shape_table(run.arch) + "\n")
    if model is not None and run.tracking["log_model"]:
        model.save(folder / "model.keras")
