"""`train(run)`: one run end to end — data, model, fit, test, MLflow. Testable without Hydra.

Example:
    >>> from cnnlab.schema import check_config
    >>> run = check_config(cfg)                      # doctest: +SKIP
    >>> train(run)["test_accuracy"]                  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.builder import build_model, shape_table, verify_model
from cnnlab.data import load_data
from cnnlab.plots import confusion_matrix, learning_curve
from cnnlab.tracking import REPO_ROOT, NoTracker, Tracker, flatten, tracking_uri


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


def compile_model(model, run) -> None:
    from cnnlab.backend import keras
    from cnnlab.optimizers import make_optimizer

    # softmax cross-entropy on the logits the output layer emits (or on its softmax, if it has one)
    from_logits = run.arch.rows[-1].args.get("activation") != "softmax"
    model.compile(
        optimizer=make_optimizer(run.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=run.trainer["jit_compile"],
        steps_per_execution=run.trainer["steps_per_execution"],
    )


def evaluate(model, data, from_logits: bool) -> tuple[dict, np.ndarray]:
    """Test loss and accuracy from one pass over the test set; also returns the predicted classes."""
    from cnnlab.backend import keras

    outputs = model.predict(data.x_test, batch_size=500, verbose=0)
    losses = keras.losses.sparse_categorical_crossentropy(data.y_test, outputs, from_logits=from_logits)
    predicted = np.argmax(outputs, axis=-1)
    metrics = {
        "test_loss": float(np.mean(keras.ops.convert_to_numpy(losses))),
        "test_accuracy": float(np.mean(predicted == data.y_test)),
    }
    return metrics, predicted


def train(run, overrides: list[str] | tuple = (), choices: dict | None = None,
          parent_run_id: str | None = None, name: str | None = None) -> dict:
    """Train and evaluate one validated run; track it in MLflow unless `tracking.enabled` is false.

    Returns the final metrics. Raises `Diverged` (after marking the run FAILED)
    when the loss becomes NaN/inf, `DataError` (before any run exists) for bad data.
    """
    data = load_data(run.dataset)  # a data error must come before any MLflow run exists
    from cnnlab.backend import device_name, keras, make_deterministic
    from cnnlab.diagnostics import diagnostics_metrics, init_diagnostics
    from cnnlab.fit import fit

    keras.backend.clear_session()  # sweep jobs may share a worker process
    seed = run.trainer["seed"]
    keras.utils.set_random_seed(seed)
    if run.trainer["deterministic"]:
        make_deterministic()
    keras.config.set_dtype_policy(run.trainer["mixed_precision"] or "float32")  # global: reset for every job
    model = build_model(run.arch, seed)
    verify_model(run.arch, model)
    compile_model(model, run)
    from_logits = run.arch.rows[-1].args.get("activation") != "softmax"

    name = run.tracking["run_name"] or name or run_name(run, choices)
    diag = init_diagnostics(model, data.x_train[: run.trainer["batch_size"]], data.y_train[: run.trainer["batch_size"]],
                            from_logits)
    tracker = (Tracker.start(tracking_uri(run.tracking), run.tracking["experiment"], name, parent_run_id=parent_run_id)
               if run.tracking["enabled"] else NoTracker())
    try:
        tracker.log_params(flatten(run.resolved))
        tracker.set_tags({
            "hydra.overrides": " ".join(overrides) or "(none)", **git_state(), **versions(),
            "keras.backend": keras.backend.backend(), "device": device_name(),
            "data.source": data.source, "model.params": str(run.arch.total_params),
            **{f"choice.{group}": option for group, option in (choices or {}).items()},
        })
        tracker.log_metrics(0, diagnostics_metrics(diag))
        started = time.perf_counter()
        result = fit(model, data, run.trainer, on_eval=tracker.log_metrics)
        seconds = time.perf_counter() - started
        final, predicted = {"initial_loss": diag["initial_loss"]}, None
        if not result.diverged:
            test, predicted = evaluate(model, data, from_logits)
            final.update(test, train_seconds=seconds)
            if result.timer.images_per_second:
                final["images_per_second"] = result.timer.images_per_second
            tracker.log_metrics(result.steps, {k: v for k, v in final.items() if k != "initial_loss"})
        else:
            tracker.set_tags({"diverged": "true", "diverged_at_step": str(result.diverged.step)})
        if run.tracking["enabled"]:
            with tempfile.TemporaryDirectory() as tmp:
                write_artifacts(Path(tmp), run, name, result, diag, data, predicted, model)
                tracker.log_artifacts(tmp)
        if result.timer.first_step_unix:
            tracker.set_tags({"timing.first_step_unix": f"{result.timer.first_step_unix:.3f}"})
        if run.tracking["enabled"]:  # what MLflow cost this run (import, store, logging, artifacts)
            tracker.log_metrics(result.steps, {"tracking_seconds": tracker.seconds})
        if result.diverged:
            raise result.diverged
        tracker.end("FINISHED")
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    print(f"{name}: test_accuracy={final['test_accuracy']:.4f} test_loss={final['test_loss']:.4f} "
          f"({result.steps} steps in {seconds:.1f} s)" + (f", MLflow run {tracker.run_id}" if tracker.run_id else ""))
    last_eval = result.history[-1] if result.history else {}
    return {**final, "val_accuracy": last_eval.get("val_accuracy"), "steps": result.steps, "run_id": tracker.run_id}


def write_artifacts(folder: Path, run, name, result, diag, data, predicted, model) -> None:
    """config.yaml, shape_table.txt and the plots; the model only when training finished."""
    from omegaconf import OmegaConf

    from cnnlab.diagnostics import plot_diagnostics

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run.resolved)))
    (folder / "shape_table.txt").write_text(shape_table(run.arch) + "\n")
    plot_diagnostics({name: diag}, folder / "init_diagnostics.png", f"{name}: activation scale at initialisation")
    if result.history:
        learning_curve(result.history, name, folder / "learning_curve.png")
    if predicted is not None:
        confusion_matrix(data.y_test, predicted, run.dataset["num_classes"], f"{name}: test set",
                         folder / "confusion_matrix.png")
        if run.tracking["log_model"]:
            model.save(folder / "model.keras")
