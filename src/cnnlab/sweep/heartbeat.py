"""Optuna's heartbeat for cnnlab's ask-and-tell study: a killed sweep's trials are failed from any host.

On this host a trial's sweep is judged by its process (`cnnlab.record.liveness`); a sweep killed on
another host (a SLURM login node, a laptop) cannot be judged that way. So the sweeper records each
trial in flight in the study's RDB storage every `hydra.sweeper.heartbeat_interval` seconds, and the
next sweep of the study, from any host, fails the trials whose last heartbeat is older than
`hydra.sweeper.grace_period` (Optuna's `fail_stale_trials`) and retries their parameters.

Optuna starts its own heartbeat thread only inside `Study.optimize` (the helper is private,
`optuna.storages._heartbeat`); an ask-and-tell owner records them through the storage's public
`record_heartbeat`, which is all this class does.

Example:
    >>> import optuna
    >>> storage = optuna.storages.RDBStorage("sqlite://", heartbeat_interval=60, grace_period=120)
    >>> study = optuna.create_study(storage=storage, study_name="s")
    >>> with Heartbeat(storage, "s") as beat:
    ...     beat.add(study.ask().number)
    ...     len(beat.ids)
    1
"""

from __future__ import annotations

import logging
import threading
import warnings

log = logging.getLogger(__name__)


class Heartbeat:
    """Records the heartbeat of the trials `add`ed (until `remove`d) every interval, on a daemon thread."""

    def __init__(self, storage, study_name: str):
        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.study_id = storage.get_study_id_from_name(study_name)
        self.ids: dict[int, int] = {}  # trial number -> trial id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def add(self, number: int) -> None:
        if self.interval:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            self.ids[number] = trial_id
            self.storage.record_heartbeat(trial_id)

    def remove(self, number: int) -> None:
        self.ids.pop(number, None)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.ids.values()):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a storage hiccup: the next beat tries again; grace_period spans several
                    log.warning(f"optuna: heartbeat of trial id {trial_id} not recorded: {str(e).splitlines()[0]}")


def fail_stale(study) -> None:
    """Optuna's `fail_stale_trials`: RUNNING trials whose heartbeat is older than the grace period become FAIL
    (the storage's stale-trial callback then retries them)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
