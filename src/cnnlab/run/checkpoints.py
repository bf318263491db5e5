"""Checkpoints of a run in training, so that `resume=<run_id>` continues it where it stopped.

A checkpoint is one folder per MLflow run, `<root>/<run_id>/`, holding
`step-<k>.weights.h5` (the model's weights *and* the optimizer's state,
`optimizer.iterations` included: Keras 3's `save_weights` saves the whole
compiled model) and `latest.json` naming it with its step. The step is also
the position in the batch order (`cnnlab.data.pipeline` yields batch k as step k),
so a resumed run takes exactly the batches an uninterrupted one would.

Each file is written under a temporary name and renamed once whole, weights
first, then `latest.json`: a process killed mid-save leaves the previous
checkpoint intact. The folder is removed when the run FINISHES.

The root is `trainer.checkpoint_dir`, else a `checkpoints` folder beside a
SQLite store, else `<repo>/mlruns/checkpoints`. Nothing here imports
TensorFlow or MLflow at module level.

Example:
    >>> from cnnlab.run.trainer import check_trainer
    >>> root = checkpoint_root(check_trainer({"steps": 10, "checkpoint_dir": "/tmp/ck"}), "sqlite:////x/mlflow.db")
    >>> str(root), latest(root / "no-such-run")
    ('/tmp/ck', None)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cnnlab.errors import CheckpointError
from cnnlab.record.store import REPO_ROOT, sqlite_path
from cnnlab.run.trainer import TrainerConfig

STATE = "latest.json"


def checkpoint_root(trainer: TrainerConfig, uri: str) -> Path:
    """Where the per-run checkpoint folders live (see the module docstring)."""
    if trainer.checkpoint_dir:
        return Path(trainer.checkpoint_dir).expanduser().resolve()
    db = sqlite_path(uri)
    return (db.parent if db else REPO_ROOT / "mlruns") / "checkpoints"


def interval(trainer: TrainerConfig) -> int | None:
    """Steps between checkpoints: `auto` = at each evaluation (or epoch); None = off."""
    every = trainer.checkpoint_every
    if every == "auto":
        return trainer.eval_every or 0  # 0: at each epoch end (eval_every null evaluates per epoch)
    return every or None


def latest(folder: Path) -> dict | None:
    """{"step": k, "weights": <file>} of the newest whole checkpoint in `folder`, or None."""
    try:
        state = json.loads((Path(folder) / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if (Path(folder) / state.get("weights", "")).is_file() else None


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _write_weights(model, final: Path) -> None:
    """Write `model.save_weights` to `final` atomically, such that a full disk is an OSError, not a crash.

    HDF5 can kill the process (SIGSEGV) when a write fails mid-file, and a check for room beforehand
    races with whatever else fills the disk. So HDF5 writes into RAM (`/dev/shm`) when that has room,
    and Python copies the bytes to `final`'s disk, where ENOSPC is an ordinary exception.
    """
    import tempfile

    shm = Path("/dev/shm")
    size = _expected_size(model, final.parent)
    staged = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * size + 2**20
    if not staged:
        _check_room(model, final.parent)
    tmp = final.parent / f".{final.name}.tmp.weights.h5"  # Keras wants the .weights.h5 suffix
    try:
        if staged:
            with tempfile.TemporaryDirectory(dir=shm, prefix="cnnlab-") as ram:
                model.save_weights(Path(ram) / "w.weights.h5", overwrite=True)
                shutil.copyfile(Path(ram) / "w.weights.h5", tmp)
        else:
            model.save_weights(tmp, overwrite=True)
        _replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, final)


def _expected_size(model, folder: Path) -> int:
    previous = [f.stat().st_size for f in folder.glob("step-*.weights.h5")]
    # weights plus optimizer slots (Adam: 2 a weight), float32, when there is no checkpoint to go by
    return max(previous) if previous else model.count_params() * 4 * 3


def _check_room(model, folder: Path) -> None:
    """ENOSPC if the disk lacks room for two checkpoints (only when HDF5 must write there directly)."""
    import errno

    if shutil.disk_usage(folder).free < 2 * _expected_size(model, folder) + 2**20:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def save(model, folder: Path, extra: dict | None = None) -> int:
    """Write a checkpoint of `model` at its current step (atomically); returns the step."""
    from cnnlab.backend import iterations

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    step = iterations(model)
    name = f"step-{step:09d}.weights.h5"
    _write_weights(model, folder / name)
    state = folder / f".{STATE}.tmp"
    state.write_text(json.dumps({"step": step, "weights": name, **(extra or {})}))
    _replace(state, folder / STATE)
    for old in folder.glob("step-*.weights.h5"):  # only the one `latest.json` names is needed now
        if old.name != name:
            old.unlink(missing_ok=True)
    return step


def restore(model, folder: Path) -> dict:
    """Load the latest checkpoint into a compiled `model`; returns its state ({"step": k, ...})."""
    state = latest(folder)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {folder}")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded into
    model.load_weights(Path(folder) / state["weights"])
    return state


def checkpointer(folder: Path, every: int, chunk: int, steps: int):
    """A Keras callback that checkpoints when the step passes a multiple of `every` (0: at each evaluation).

    `chunk` is `fit`'s evaluation interval and `steps` the budget: a checkpoint due at an
    evaluation is written after the evaluation was handed to the recorder (this callback
    comes after `fit.Monitor`), so a resumed run never misses, nor repeats, an evaluation.
    """
    from cnnlab.backend import iterations, keras

    class Checkpointer(keras.callbacks.Callback):
        """Keras's own saving (`save_weights`: weights and optimizer state), not `keras.callbacks.BackupAndRestore`.

        The gap, re-read in Keras 3.15.1: BackupAndRestore writes its files in place (a kill mid-save
        leaves weights and metadata that disagree; `double_checkpoint` keeps a copy of the previous
        pair but still overwrites in place), records the batch but restores only `_initial_epoch`
        (the batch position is dropped: a step budget resumes at the chunk's start), restores in
        `on_train_begin`, after the input stream was built (ours must start at the checkpoint's batch),
        and by default deletes its backup at the end of every `fit`, also one stopped by a signal.
        """

        def __init__(self):
            super().__init__()
            self.saved_step: int | None = None
            self.seconds = 0.0  # time spent writing checkpoints
            self.failed: CheckpointError | None = None  # a save failed: `fit` raises it after stopping

        def _due(self, step: int) -> bool:
            last = self.saved_step if self.saved_step is not None else self.first_step
            return step // (every or chunk) > last // (every or chunk)

        def on_train_begin(self, logs=None):
            self.first_step = iterations(self.model) if self.saved_step is None else self.saved_step

        def on_train_batch_end(self, batch, logs=None):
            if self.failed:
                return
            step = iterations(self.model)
            at_eval = step % chunk == 0 or step == steps  # on_epoch_end follows
            if every and not at_eval and self._due(step):
                self.save()

        def on_epoch_end(self, epoch, logs=None):
            if not self.failed and self._due(iterations(self.model)):
                self.save()

        def save(self) -> int | None:
            """Write a checkpoint now; on failure stop training (`failed`) and leave no partial file."""
            import time

            started = time.perf_counter()
            try:
                self.saved_step = save(self.model, folder)
            except OSError as e:
                why = os.strerror(e.errno) if e.errno else str(e).splitlines()[0]
                self.failed = CheckpointError(f"cannot write a checkpoint in {folder}: {why} "
                                              f"(training stopped at step {iterations(self.model)})")
                self.model.stop_training = True
                for partial in Path(folder).glob(".*.tmp*"):
                    partial.unlink(missing_ok=True)
            self.seconds += time.perf_counter() - started
            return self.saved_step

    return Checkpointer()


class BestWeights:
    """`trainer.keep_best`: the weights of the best evaluation so far, `best.weights.h5` in the run's folder.

    Called with each evaluation (`fit`'s `on_eval`); `best.json` ({"step", "metric", "value"}) is read
    back on resume, so a resumed run keeps comparing against the best from before the kill.
    """

    def __init__(self, folder: Path, metric: str):
        self.folder, self.metric = Path(folder), metric
        try:
            self.best = json.loads((self.folder / "best.json").read_text())
        except (OSError, ValueError):
            self.best = None

    def update(self, model, step: int, metrics: dict) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        better = min if self.metric.endswith("loss") else max
        if self.best is not None and better(value, self.best["value"]) == self.best["value"]:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_weights(model, self.folder / "best.weights.h5")
        self.best = {"step": step, "metric": self.metric, "value": value}
        (self.folder / ".best.json.tmp").write_text(json.dumps(self.best))
        _replace(self.folder / ".best.json.tmp", self.folder / "best.json")
