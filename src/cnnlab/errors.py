"""The errors a user meets: a bad config or input (one line, exit 2) and a diverged run (exit 3)."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A problem in the user's config or input, reported as one line.

    `path` is the dotted config key (``model.layers.conv1.padding``) so the
    user can find the value and fix it or override it from the command line.

    Example:
        >>> str(ConfigError("trainer.batch_size", "expected a positive integer, got 0"))
        'trainer.batch_size: expected a positive integer, got 0'
    """

    run_id: str | None = None  # the MLflow run that records this failure, when it came after the run existed

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class DataError(ConfigError):
    """A data file that is missing, corrupt or cannot be downloaded."""


class Diverged(Exception):
    """The training loss became NaN, infinite, or larger than `trainer.max_loss`."""

    def __init__(self, step: int, loss: float, max_loss: float | None):
        self.step, self.loss = step, loss
        why = "" if not math.isfinite(loss) else f" (above trainer.max_loss={max_loss:g})"
        super().__init__(f"training diverged: loss became {loss:g}{why} at step {step}")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (e.g. a full disk): training stopped, the run is FAILED."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM; the process then exits with 128 + the signal number (130, 143).

    A KeyboardInterrupt, so every `except BaseException` that ends an MLflow run as KILLED sees it.

    Example:
        >>> import signal
        >>> Interrupted(signal.SIGTERM).exit_code
        143
    """

    last: int | None = None  # the signal that last interrupted this process (a sweep then ends its parent KILLED)

    def __init__(self, signum: int):
        self.signum = int(signum)
        Interrupted.last = self.signum
        super().__init__(f"signal {self.signum}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
