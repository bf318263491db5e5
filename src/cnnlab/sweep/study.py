"""`hydra/sweeper=cnnlab_optuna`: an Optuna (>= 4) study that persists, resumes, prunes and runs in parallel.

The sweeper owns the study through Optuna's ask-and-tell API; each trial is one Hydra job:

- **Search space**: `hydra.sweeper.params` (and sweep overrides on the command line) in Hydra's syntax:
  `choice(a, b)`, `range(a, b)`, `interval(lo, hi)`, `tag(log, interval(lo, hi))`, `tag(int, interval(...))`.
- **Scheduling**: with `hydra/launcher=cnnlab`, a new trial is asked whenever a worker frees
  (`launch_stream`): `n_jobs` trials in flight, none waiting on a batch. Other launchers (joblib, Ray,
  SLURM), whose `launch()` returns when a whole list is done, get batches of `n_jobs` trials.
- **A job learns its trial from its config**: the overrides `+optuna.trial=<n> +optuna.study=<name>
  +optuna.storage='<url>'` (`cnnlab.run.trial`). It reports val_accuracy at every evaluation and, pruned,
  returns `Pruned`; only this process tells Optuna how a trial ended (COMPLETE, PRUNED or FAIL).
- **Storage**: an RDB storage (default: `optuna.db` beside MLflow's SQLite store; PostgreSQL works too),
  the study `load_if_exists`: the same command again continues it up to `n_trials` in total.
  A trial left RUNNING by a sweep that was killed (its process on this host gone, or on any host its
  heartbeat older than `grace_period`: `cnnlab.sweep.heartbeat`) is marked FAIL and
  its parameters enqueued again; a sweep stopped by Ctrl-C does the same for its trials in flight.
- **The MLflow parent run holds the study** (`cnnlab.sweep.study_summary`): its name and storage as
  tags, best value and parameters, and Optuna's plots (optimization history, parameter importances,
  intermediate values).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.sweep.study_summary import override_value, summarize

log = logging.getLogger(__name__)

KEYS = ("n_trials", "direction", "study_name", "storage", "n_jobs", "sampler", "pruner", "params",
        "heartbeat_interval", "grace_period")
SAMPLERS = ("tpe", "random")
TRIAL_KEYS = ("+optuna.trial", "+optuna.study", "+optuna.storage")  # what the sweeper adds to each job


def check_sweeper(settings: dict) -> dict:
    """The sweeper's settings, checked: a ConfigError naming `hydra.sweeper.<key>` otherwise."""
    s = OmegaConf.to_container(OmegaConf.create(dict(settings)), resolve=True)
    for key in s:
        if key not in KEYS:
            raise ConfigError(f"hydra.sweeper.{key}", f"unknown key (known: {', '.join(KEYS)})")
    n = s.get("n_trials", 20)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("hydra.sweeper.n_trials", f"{n!r} is not a positive integer")
    if s.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ConfigError("hydra.sweeper.direction", f"{s['direction']!r} is not maximize or minimize")
    jobs = s.get("n_jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError("hydra.sweeper.n_jobs", f"{jobs!r} is not a positive integer")
    sampler = dict(s.get("sampler") or {})
    if sampler.get("type", "tpe") not in SAMPLERS:
        raise ConfigError("hydra.sweeper.sampler.type", f"{sampler['type']!r} is not one of: {', '.join(SAMPLERS)}")
    for key in sampler:
        if key not in ("type", "seed", "n_startup_trials"):
            raise ConfigError(f"hydra.sweeper.sampler.{key}", "unknown key (known: type, seed, n_startup_trials)")
    beat = {key: s.get(key, default) for key, default in (("heartbeat_interval", 30), ("grace_period", 120))}
    for key, v in beat.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"hydra.sweeper.{key}", f"{v!r} is not a positive number of seconds")
    if beat["grace_period"] <= beat["heartbeat_interval"]:
        raise ConfigError("hydra.sweeper.grace_period", f"{beat['grace_period']} must exceed heartbeat_interval "
                                                        f"({beat['heartbeat_interval']}): a live sweep's trials "
                                                        "would be failed between two heartbeats")
    from cnnlab.run.trial import make_pruner

    make_pruner(s.get("pruner"))  # its type and keys
    return {"n_trials": n, "direction": s.get("direction", "maximize"), "study_name": s.get("study_name"),
            "storage": s.get("storage"), "n_jobs": jobs, "sampler": sampler,
            "pruner": dict(s.get("pruner") or {"type": "none"}), "params": dict(s.get("params") or {}),
            "heartbeat": (beat["heartbeat_interval"], beat["grace_period"])}


def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """Optuna distributions by override key, and the fixed overrides every job gets.

    >>> space, fixed = search_space({"optimizer.lr": "tag(log, interval(1e-4, 0.3))", "init": "choice(he, glorot)"},
    ...                             ["trainer.steps=20", "trainer.seed=1,2"])
    >>> sorted(space), fixed
    (['init', 'optimizer.lr', 'trainer.seed'], ['trainer.steps=20'])
    >>> space["optimizer.lr"].log, space["trainer.seed"].choices
    (True, (1, 2))
    """
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in params.items()]
    swept_here = {o.get_key_element() for o in parser.parse_overrides(lines) if o.is_sweep_override()}
    space, fixed = {}, []
    for o in parser.parse_overrides(list(arguments) + lines):
        key = o.get_key_element()
        if not o.is_sweep_override():
            if key not in swept_here:
                fixed.append(o.input_line)
            continue
        value = o.value()
        if isinstance(value, ChoiceSweep):
            space[key] = optuna.distributions.CategoricalDistribution(list(o.sweep_iterator()))
        elif isinstance(value, RangeSweep):
            space[key] = optuna.distributions.CategoricalDistribution(list(o.sweep_iterator()))
        elif isinstance(value, IntervalSweep):
            log_scale = "log" in value.tags
            if "int" in value.tags:
                space[key] = optuna.distributions.IntDistribution(int(value.start), int(value.end), log=log_scale)
            else:
                space[key] = optuna.distributions.FloatDistribution(float(value.start), float(value.end),
                                                                    log=log_scale)
        else:
            raise ConfigError(f"hydra.sweeper.params.{key}", f"{o.input_line!r}: not choice(), range() or interval()")
    return space, fixed


def default_study_name(experiment: str, space: dict, direction: str) -> str:
    """`<experiment>-<8 hex digits>`: the same experiment and search space give the same study (a re-run resumes)."""
    import optuna

    text = json.dumps({"space": {k: optuna.distributions.distribution_to_json(d) for k, d in sorted(space.items())},
                       "direction": direction}, sort_keys=True)
    return f"{experiment}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def default_storage(tracking_uri: str) -> str:
    """`sqlite:///<folder of MLflow's SQLite db>/optuna.db`: Optuna's own database, never MLflow's."""
    from cnnlab.record.store import DEFAULT_DB, sqlite_path

    folder = (sqlite_path(tracking_uri) or DEFAULT_DB).parent
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def make_sampler(spec: dict, parallel: bool, trials_before: int = 0):
    """The study's sampler; a resumed study's is seeded with `seed + trials_before`.

    The seed alone would replay the first sweep's random draws, so a resumed study would propose its
    first trials again (measured: a resumed `optuna_lr_init` re-ran trial 0's init and lr).
    """
    import optuna

    seed = spec.get("seed")
    if seed is not None:
        seed += trials_before
    if spec.get("type", "tpe") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials in flight count as if they had scored badly, so parallel trials spread out
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("n_startup_trials", 10),
                                      constant_liar=parallel)


def open_study(storage, name: str, spec: dict, n_jobs: int):
    """Create the study, or load it with a sampler seeded past the draws of the sweeps before it."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction=spec["direction"],
                                sampler=make_sampler(spec["sampler"], n_jobs > 1), load_if_exists=True)
    before = len(study.get_trials(deepcopy=False))
    if before:
        study.sampler = make_sampler(spec["sampler"], n_jobs > 1, before)
    return study


def retried_numbers(study) -> set[int]:
    """Trials failed by a stopped sweep whose parameters were enqueued again (user attribute cnnlab.retry_of)."""
    return {t.user_attrs["cnnlab.retry_of"] for t in study.get_trials(deepcopy=False)
            if "cnnlab.retry_of" in t.user_attrs}


def trials_done(study) -> int:
    """Trials that count towards `n_trials`: COMPLETE, PRUNED, and FAIL unless they are being retried."""
    from optuna.trial import TrialState

    ended = [t for t in study.get_trials(deepcopy=False)
             if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    retried = retried_numbers(study)
    return sum(1 for t in ended if not (t.state == TrialState.FAIL and t.number in retried))


def fail_and_retry(study, trials, why: str) -> None:
    """Mark RUNNING trials FAIL and enqueue their parameters again (the next ask gets them first)."""
    from optuna.trial import TrialState

    for t in trials:
        params = t.params
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:
            continue  # ended meanwhile
        retry(study, t.number, params)
        log.info(f"optuna: trial {t.number} FAIL ({why}); its parameters will be retried")


def retry(study, number: int, params: dict) -> None:
    """Enqueue a failed trial's parameters again (the next ask gets them first), marked `cnnlab.retry_of`."""
    study.enqueue_trial(params, user_attrs={"cnnlab.retry_of": number}, skip_if_exists=False)


def recover(study, stale: list) -> int:
    """Trials left RUNNING by a sweep that is gone: FAIL, parameters retried. Gone: its process on this host
    has ended, or (any host) its heartbeat is older than the grace period (`cnnlab.sweep.heartbeat`;
    `stale` is the list the storage's stale-trial callback appends to)."""
    from optuna.trial import TrialState

    from cnnlab.record.liveness import owner_alive
    from cnnlab.sweep.heartbeat import fail_stale

    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("cnnlab.owner")
        if owner is None or not owner_alive(owner):
            dead.append(t)
    fail_and_retry(study, dead, "its sweep was killed")
    fail_stale(study)
    return len(dead) + len(stale)


def run_study(sweeper, arguments: list[str]):
    """The sweep: ask, launch, tell until the study has `n_trials`; then the study into the MLflow parent."""
    from cnnlab.cli import fail

    try:
        return _run_study(sweeper, arguments)
    except ConfigError as e:
        fail(str(e))


def _run_study(sweeper, arguments: list[str]):
    import optuna
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    from cnnlab.config.guard import redact_text
    from cnnlab.record.liveness import process_tags
    from cnnlab.record.tracking import check_tracking, tracking_uri
    from cnnlab.run.trial import Pruned, open_storage
    from cnnlab.sweep.heartbeat import Heartbeat

    optuna.logging.set_verbosity(logging.WARNING)
    config: DictConfig = sweeper.config
    spec = check_sweeper(sweeper.settings)
    space, fixed = search_space(spec["params"], arguments)
    if not space:
        raise ConfigError("hydra.sweeper.params", "is empty: give the search space, e.g. "
                                                  "optimizer.lr: tag(log, interval(1e-4, 0.3))")
    tracking = check_tracking(OmegaConf.to_container(config.tracking, resolve=True))
    uri = tracking_uri(tracking)
    url = spec["storage"] or default_storage(uri)
    name = spec["study_name"] or default_study_name(tracking.experiment, space, spec["direction"])
    n_jobs = spec["n_jobs"] or int(getattr(sweeper.launcher, "n_jobs", 1) or 1)
    stale = []

    def on_stale(study, trial):  # fail_stale_trials failed it: its sweep stopped beating
        stale.append(trial.number)
        retry(study, trial.number, trial.params)
        log.info(f"optuna: trial {trial.number} FAIL (no heartbeat for {spec['heartbeat'][1]} s); "
                 "its parameters will be retried")

    try:
        storage = open_storage(url, spec["heartbeat"], on_stale)
        study = open_study(storage, name, spec, n_jobs)
    except Exception as e:
        raise ConfigError("hydra.sweeper.storage", f"cannot open the Optuna study {name!r} at "
                                                   f"{redact_text(url)!r}: {str(e).splitlines()[0][:300]}") from None
    if study.direction.name.lower() != spec["direction"]:
        raise ConfigError("hydra.sweeper.direction", f"{spec['direction']!r} but study {name!r} in that storage "
                                                     f"{study.direction.name.lower()}s: name another study_name")
    study.set_user_attr("cnnlab.pruner", spec["pruner"])  # every job's reporter prunes with it (cnnlab.run.trial)
    recovered = recover(study, stale)
    done = trials_done(study)
    to_ask = max(0, spec["n_trials"] - done)
    shown = redact_text(url)
    print(f"optuna: study {name} in {shown}: {done} trials done"
          + (f", {recovered} left RUNNING by a killed sweep now FAIL and retried" if recovered else "")
          + f"; {to_ask} to run, {n_jobs} at a time, pruner {spec['pruner'].get('type', 'none')}", flush=True)
    parent = next((a.split("=", 1)[1] for a in arguments if a.startswith("tracking.parent_run_id=")), None)
    tracker = None
    if parent and tracking.enabled:
        from cnnlab.record.tracking import Tracker

        tracker = Tracker.attach(uri, parent)
        tracker.set_tags({"optuna.study_name": name, "optuna.storage": shown, "optuna.direction": spec["direction"],
                          "optuna.n_trials": str(spec["n_trials"]), "optuna.trials_before": str(done),
                          "optuna.pruner": json.dumps(spec["pruner"]), "cnnlab.sweep.kind": "optuna"})

    owner = process_tags()
    in_flight: dict[int, optuna.trial.Trial] = {}
    asked = [0]
    results = []

    def next_job():
        if asked[0] >= to_ask:
            return None
        asked[0] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... with Study.optimize": beat records it
            trial = study.ask(space)
        trial.set_user_attr("cnnlab.owner", owner)
        in_flight[trial.number] = trial
        beat.add(trial.number)
        overrides = [*fixed, *(f"{k}={override_value(v)}" for k, v in trial.params.items()),
                     f"+optuna.trial={trial.number}", f"+optuna.study={name}", f"+optuna.storage='{url}'"]
        return trial.number, overrides

    def on_result(number, ret):
        trial = in_flight.pop(number)
        beat.remove(number)
        results.append(ret)
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        if isinstance(value, Pruned):
            study.tell(trial, state=TrialState.PRUNED)
            how = f"PRUNED at step {value.step}"
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            study.tell(trial, float(value))
            how = f"COMPLETE, value {value:.4f}"
        else:  # a failed, diverged or lost job: its child run says why
            study.tell(trial, state=TrialState.FAIL)
            how = "FAIL"
        log.info(f"optuna: trial {number} {how}")

    try:
        with Heartbeat(storage, name) as beat:  # in flight: each trial's heartbeat, for other hosts
            if hasattr(sweeper.launcher, "launch_stream"):  # hydra/launcher=cnnlab: a trial per free worker
                sweeper.launcher.launch_stream(next_job, on_result)
            else:  # a launcher that runs a list at a time: batches of n_jobs
                index = 0
                while True:
                    batch = [job for job in (next_job() for _ in range(n_jobs)) if job is not None]
                    if not batch:
                        break
                    numbers = [number for number, _ in batch]
                    for number, ret in zip(numbers, sweeper.launcher.launch([o for _, o in batch], index)):
                        on_result(number, ret)
                    index += len(batch)
    except BaseException:  # Ctrl-C, SIGTERM, a launcher's error: no trial stays RUNNING
        fail_and_retry(study, list(in_flight.values()), "its sweep stopped")
        raise
    summarize(study, tracker, len(space))
    return [results]
