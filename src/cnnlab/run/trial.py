"""A sweep job's Optuna trial (`hydra/sweeper=cnnlab_optuna`): report each evaluation, stop when pruned.

The job learns its trial from its own config, which the sweeper composes for it with the overrides
`+optuna.trial=<number> +optuna.study=<name> +optuna.storage='<url>'`; the study's pruner is stored in
the study itself (its user attribute `cnnlab.pruner`), so every job prunes as the sweeper configured.
Only the sweeper tells Optuna how a trial ended; a job only reports intermediate values and returns
its result, or `Pruned` when the pruner stopped it.

Example:
    >>> check_trial({"trial": 3, "study": "s", "storage": "sqlite:///x.db"}).trial
    3
    >>> check_trial(None) is None
    True
    >>> make_pruner({"type": "none"}).__class__.__name__
    'NopPruner'
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.errors import ConfigError

PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class TrialConfig:
    trial: int
    study: str
    storage: str


def check_trial(cfg, path: str = "optuna") -> TrialConfig | None:
    """The top-level `optuna` key a study's sweeper sets on each job (absent in every other run)."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(path, f"{cfg!r} is not a mapping (the Optuna sweeper sets optuna.trial, .study, .storage)")
    unknown = sorted(set(cfg) - {"trial", "study", "storage"})
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key (known: trial, study, storage)")
    for key in ("trial", "study", "storage"):
        if cfg.get(key) is None:
            raise ConfigError(f"{path}.{key}", "is missing (the Optuna sweeper sets it for each job)")
    trial = cfg["trial"]
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise ConfigError(f"{path}.trial", f"{trial!r} is not a trial number (an integer >= 0)")
    return TrialConfig(trial, str(cfg["study"]), str(cfg["storage"]))


@dataclass(frozen=True)
class Pruned:
    """A sweep job's result when its trial was pruned: the step and the last reported value."""

    step: int
    value: float | None


def open_storage(url: str, heartbeat: tuple[int, int] | None = None, on_stale=None):
    """Optuna's RDB storage at `url`; SQLite waits for a lock instead of failing at once (parallel jobs write).

    `heartbeat`: (heartbeat_interval, grace_period) in seconds, and `on_stale(study, trial)` called for each
    trial `fail_stale_trials` fails: the sweeper's storage (`cnnlab.sweep.heartbeat`); a job's has none.
    """
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if not heartbeat:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat[0],
                                      grace_period=heartbeat[1], heartbeat_stale_trial_callback=on_stale)


def make_pruner(spec: dict | None):
    """`hydra.sweeper.pruner` ({type: median|hyperband|none, and the pruner's own arguments}) as an Optuna pruner."""
    import inspect

    import optuna

    spec = dict(spec or {"type": "none"})
    kind = spec.pop("type", "none")
    kinds = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "none": optuna.pruners.NopPruner}
    if kind not in kinds:
        raise ConfigError("hydra.sweeper.pruner.type", f"{kind!r} is not one of: {', '.join(PRUNERS)}")
    # the preset's keys are the median pruner's: each pruner takes those it knows, a key none knows is an error
    known = {name: set(inspect.signature(cls).parameters) for name, cls in kinds.items()}
    unknown = sorted(set(spec) - set().union(*known.values()))
    if unknown:
        raise ConfigError(f"hydra.sweeper.pruner.{unknown[0]}", "is not an argument of Optuna's MedianPruner "
                                                                 "or HyperbandPruner")
    return kinds[kind](**{k: v for k, v in spec.items() if k in known[kind]})


class TrialReporter:
    """This job's trial, reopened from the storage: `report(step, value)` is True when the trial should stop."""

    def __init__(self, spec: TrialConfig):
        import logging

        import optuna

        optuna.logging.set_verbosity(logging.WARNING)
        storage = open_storage(spec.storage)
        study = optuna.load_study(study_name=spec.study, storage=storage, sampler=optuna.samplers.RandomSampler())
        study.pruner = make_pruner(study.user_attrs.get("cnnlab.pruner"))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec.study),
                                                                    spec.trial)
        self.trial = optuna.trial.Trial(study, trial_id)

    def report(self, step: int, value) -> bool:
        import math

        if value is None or not math.isfinite(value):
            return False
        self.trial.report(float(value), step)
        return self.trial.should_prune()
