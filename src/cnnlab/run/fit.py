"""The Keras side of training: `model.fit` over a step budget, divergence and metric hooks.

The budget is counted in optimizer steps, as LTFN counts it: the batches
(`cnnlab.data.pipeline`) walk the training set epoch after epoch, and `fit` runs
them in chunks of `trainer.eval_every` steps with a validation pass after
each chunk.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field

from cnnlab.backend import iterations, keras
from cnnlab.data.pipeline import training_batches, validation_input
from cnnlab.errors import Diverged, Interrupted
from cnnlab.run.trainer import TrainerConfig


class Monitor(keras.callbacks.Callback):
    """Stops at the first diverged loss; hands each evaluation's metrics to `on_eval`, and stops if it returns True.

    Keras reports the chunk's running mean loss, so one exploding batch shows at once.
    """

    def __init__(self, on_eval, max_loss: float | None, check=None):
        super().__init__()
        self.on_eval, self.max_loss, self.check = on_eval, max_loss, check
        self.diverged: Diverged | None = None
        self.interrupted: int | None = None  # the signal that asked training to stop
        self.failed: Exception | None = None  # tracking broke: the run's record cannot be completed
        self.stopped_at: int | None = None  # the step at which `on_eval` asked training to stop

    def on_train_begin(self, logs=None):
        if self.interrupted:  # a signal that came while fit was starting: fit has just reset stop_training
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.interrupted:
            self.model.stop_training = True
            return
        if self.check:
            try:
                self.check()
            except Exception as e:
                self.failed = type(e)(f"{e} (training stopped at step {iterations(self.model)})")
                self.model.stop_training = True
                return
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss) or (self.max_loss is not None and loss > self.max_loss):
            self.diverged = Diverged(iterations(self.model), loss, self.max_loss)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted:
            return  # a chunk cut short by a signal: its resumed run evaluates at the usual step instead
        logs = logs or {}
        metrics = {
            name: float(logs[key])
            for name, key in (("train_loss", "loss"), ("train_accuracy", "accuracy"),
                              ("val_loss", "val_loss"), ("val_accuracy", "val_accuracy"))
            if key in logs
        }
        if self.on_eval(iterations(self.model), metrics):  # e.g. an Optuna trial pruned: stop after this evaluation
            self.stopped_at = iterations(self.model)
            self.model.stop_training = True


class TrainLog(keras.callbacks.Callback):
    """`trainer.log_every`: train loss/accuracy every k steps, each the mean over those k steps.

    Keras reports running means since the chunk began, so the mean of the last steps is
    a difference of running sums: exact, and no extra work in the training step.
    """

    def __init__(self, every: int, on_log):
        super().__init__()
        self.every, self.on_log = every, on_log
        self._first = 0  # the step the current chunk began at
        self._sums: dict[str, float] = {}
        self._seen = 0  # steps of this chunk already logged

    def on_epoch_begin(self, epoch, logs=None):
        self._first, self._sums, self._seen = iterations(self.model), {}, 0

    def on_train_batch_end(self, batch, logs=None):
        n = batch + 1  # steps of this chunk so far (batch is the last step's index, also with steps_per_execution)
        step = self._first + n
        if step % self.every or n == self._seen or not logs:
            return
        metrics = {}
        for name, key in (("train_loss", "loss"), ("train_accuracy", "accuracy")):
            if key in logs:
                total = float(logs[key]) * n
                metrics[name] = (total - self._sums.get(name, 0.0)) / (n - self._seen)
                self._sums[name] = total
        self._seen = n
        self.on_log(step, metrics)


class Progress(keras.callbacks.Callback):
    """Progress over the whole step budget (Keras's own bar counts "epochs", here evaluation chunks).

    `verbose=1`: a Keras progress bar of steps, and a line at each evaluation; 2: only the lines.
    """

    def __init__(self, steps: int, verbose: int):
        super().__init__()
        self.steps, self.verbose = steps, verbose
        self.bar = keras.utils.Progbar(steps, verbose=1, stateful_metrics=["loss", "accuracy"],
                                       unit_name="step") if verbose == 1 else None
        self._first = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._first = iterations(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar:
            self.bar.update(self._first + batch + 1, [(k, float(v)) for k, v in (logs or {}).items()
                                                        if k in ("loss", "accuracy")])

    def line(self, step: int, metrics: dict) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        from cnnlab.run.runlog import say

        if self.bar:
            print(flush=True)  # off the bar's line
        say(f"step {step}/{self.steps}  {shown}")


class StepTimer(keras.callbacks.Callback):
    """Training speed without start-up and validation: images/s over steps 2..N, and when step 1 ended.

    Step 1 includes tracing/compilation, so it is timed apart (`first_step_unix`).
    With `steps_per_execution=k`, Keras calls back once per k steps with the
    last step's index, so steps are counted from that index, not from calls.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.first_step_unix: float | None = None
        self.seconds, self.steps = 0.0, 0
        self._last: float | None = None
        self._last_batch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self._last = time.perf_counter() if self.first_step_unix is not None else None
        self._last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        done, self._last_batch = batch - self._last_batch, batch
        if self.first_step_unix is None:
            self.first_step_unix = time.time()
        elif self._last is not None:
            self.seconds += now - self._last
            self.steps += done
        self._last = now

    @property
    def images_per_second(self) -> float | None:
        return self.steps * self.batch_size / self.seconds if self.seconds else None


@contextlib.contextmanager
def stop_on_signal(monitor: Monitor):
    """Ctrl-C / SIGTERM during `model.fit` stop it after the current step, and `fit` then raises
    KeyboardInterrupt. Raised straight from the handler, the interrupt can land inside TensorFlow's
    input pipeline, which reads it as the end of the data, restarts the stream and trains on.
    A second signal raises at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        if monitor.interrupted:
            raise Interrupted(signum)
        monitor.interrupted = signum
        if getattr(monitor, "model", None) is not None:
            monitor.model.stop_training = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # {"step": ..., "train_loss": ..., ...}
    diverged: Diverged | None = None
    steps: int = 0
    timer: StepTimer | None = None
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints
    best: dict | None = None  # trainer.keep_best: {"step", "metric", "value"} of best.weights.h5
    stopped_at: int | None = None  # `on_eval` returned True at this step (an Optuna trial pruned)


def total_steps(trainer: TrainerConfig, n_train: int) -> int:
    per_epoch = math.ceil(n_train / trainer.batch_size)
    return trainer.steps or trainer.epochs * per_epoch


def progress_mode(verbose) -> int:
    """`trainer.verbose`: auto is a progress bar on a terminal, else a line per evaluation."""
    import sys

    return verbose if verbose != "auto" else (1 if sys.stdout.isatty() else 2)


def fit(model, data, trainer: TrainerConfig, on_eval=None, check=None, start: int = 0, checkpoint_dir=None,
        on_log=None, augment=None) -> FitResult:
    """Train a compiled model on `data` for the trainer's budget; never raises on divergence.

    `on_eval(step, metrics)` gets each evaluation (train and validation means over the
    chunk); if it returns True, training stops there (`FitResult.stopped_at`);
    `on_log(step, metrics)` the train means every `trainer.log_every` steps.
    `check()` runs after every step; if it raises, training stops there and `fit` raises it.
    `start`: the step a restored model is at (`cnnlab.run.checkpoints`); training goes on from
    batch `start` with evaluations at the same steps as a run from 0. `checkpoint_dir`: where
    to checkpoint (`trainer.checkpoint_every`), also when a signal stops training.
    `augment`: the `augment` group, applied to training batches only (`cnnlab.data.augment`).
    """
    from cnnlab.run import checkpoints

    result = FitResult()

    best = checkpoints.BestWeights(checkpoint_dir, trainer.keep_best) \
        if checkpoint_dir and trainer.keep_best else None

    steps = total_steps(trainer, len(data.x_train))
    progress = Progress(steps, progress_mode(trainer.verbose))

    def record(step, metrics):
        result.history.append({"step": step, **metrics})
        if best:
            best.update(model, step, metrics)
        stop = on_eval(step, metrics) if on_eval else None
        if progress.verbose:
            progress.line(step, metrics)
        return stop

    per_epoch = math.ceil(len(data.x_train) / trainer.batch_size)
    chunk = min(trainer.eval_every or per_epoch, steps)
    monitor = Monitor(record, trainer.max_loss, check)
    timer = StepTimer(trainer.batch_size)
    callbacks = [timer, monitor, progress]
    if on_log and trainer.log_every:
        callbacks.append(TrainLog(trainer.log_every, on_log))
    if trainer.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(**trainer.early_stopping))
    every = checkpoints.interval(trainer) if checkpoint_dir else None
    saver = checkpoints.checkpointer(checkpoint_dir, every, chunk, steps) if every is not None else None
    callbacks += [saver] if saver else []  # after Monitor: an evaluation is recorded before its checkpoint
    # a run resumed mid-chunk first finishes that chunk, so that it evaluates at the usual steps
    segments = [(start, (start // chunk + 1) * chunk)] if start % chunk else []
    segments.append((segments[-1][1] if segments else start, steps))
    with warnings.catch_warnings(), stop_on_signal(monitor):
        # the last chunk may be shorter than eval_every; Keras warns that the stream "ran out"
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        for first, end in segments:
            end = min(end, steps)
            if first >= end or (first != start and model.stop_training):  # stopped in the first segment
                break
            batches = training_batches(data.x_train, data.y_train, trainer.batch_size, steps, shuffle=trainer.shuffle,
                                       seed=trainer.seed, pipeline=trainer.pipeline, start=first,
                                       augment=augment)
            model.fit(
                batches.fit_input,
                epochs=math.ceil(end / chunk) if end == steps else 1,
                initial_epoch=first // chunk if end == steps else 0,
                steps_per_epoch=chunk if end == steps else end - first,
                shuffle=False,  # the order is the pipeline's; Keras would otherwise permute a PyDataset's batches
                **validation_input(data.x_val, data.y_val),
                callbacks=callbacks,
                verbose=0,  # `Progress` shows the run's steps instead of Keras's per-chunk "epochs"
            )
            batches.release()  # TF's generator registry may outlive the job: keep it from pinning the data
    if monitor.interrupted:
        if saver and not saver.failed and iterations(model) != saver.saved_step:
            saver.save()  # preemption: what was trained so far is kept for `resume=<run_id>`
        raise Interrupted(monitor.interrupted)
    if monitor.failed or (saver and saver.failed):
        raise monitor.failed or saver.failed
    result.diverged, result.timer = monitor.diverged, timer
    result.steps = iterations(model)
    result.checkpoint_seconds = saver.seconds if saver else 0.0
    result.best = best.best if best else None
    result.stopped_at = monitor.stopped_at
    return result
