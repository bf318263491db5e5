"""The one error type a user ever sees from a bad config or bad input."""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem in the user's config or input, reported as one line.

    `path` is the dotted config key (``model.layers.conv1.padding``) so the
    user can find the value and fix it or override it from the command line.

    Example:
        >>> str(ConfigError("trainer.batch_size", "expected a positive integer, got 0"))
        'trainer.batch_size: expected a positive integer, got 0'
    """

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class DataError(ConfigError):
    """A data file that is missing, corrupt or cannot be downloaded."""
