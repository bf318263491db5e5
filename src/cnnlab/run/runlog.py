"""What a run prints also goes to its log file: Hydra's `<output_dir>/run.log`, uploaded with the run.

Hydra opens a log file for each job (`conf/hydra/job_logging/cnnlab.yaml`: third-party
INFO lines such as MLflow's go only there; warnings also to the console). `say` prints a
line as `print` would and writes it to those files too, so the file holds the run's
progress, result or error; without Hydra (e.g. `train(cfg)` in a test) it just prints.

Example:
    >>> say("step 100/1000  val_accuracy 0.91")
    step 100/1000  val_accuracy 0.91
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def _files() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def say(text: str, error: bool = False) -> None:
    """Print `text` (on stderr if `error`) and append it to the job's log file."""
    print(text, file=sys.stderr if error else sys.stdout, flush=True)
    record = logging.LogRecord("cnnlab", logging.ERROR if error else logging.INFO, __file__, 0, text, None, None)
    for handler in _files():
        handler.handle(record)


def log_path() -> Path | None:
    """The job's log file, if logging writes to one."""
    files = _files()
    return Path(files[0].baseFilename) if files else None
