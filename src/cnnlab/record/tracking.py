"""Experiment tracking (config group `tracking`): MLflow on SQLite by default.

The default store is `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts`; `tracking.uri` takes any MLflow tracking URI.
mlflow is imported only when a run is actually tracked.

Example:
    >>> check_tracking({"enabled": False}, "tracking").experiment
    'cnnlab'
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cnnlab.config.fields import boolean, check_fields, optional, rule, rules, string
from cnnlab.errors import ConfigError
from cnnlab.record.store import URI_ENV, artifact_location, open_store, redact_uri, resolve_uri


def registered_name(v, path: str) -> str:
    """A registered model's name, usable in `models:/<name>@<alias>` and `models:/<name>/<version>` URIs.

    >>> registered_name("mnist-lenet5", "tracking.register_as")
    'mnist-lenet5'
    >>> registered_name("a/b", "tracking.register_as")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cnnlab.errors.ConfigError: tracking.register_as: 'a/b' may not contain / : @ or quotes (...)
    """
    v = string(v, path)
    if v != v.strip():
        raise ConfigError(path, f"{v!r} starts or ends with whitespace")
    if any(c in v for c in "/:@'\""):  # they separate the parts of models:/ URIs and of search filters
        raise ConfigError(path, f"{v!r} may not contain / : @ or quotes (models:/<name>@<alias> must parse)")
    return v


@dataclass(frozen=True)
class TrackingConfig:
    """A checked `tracking` group: each key's type, rule and default, declared once (`cnnlab.config.fields.rule`)."""

    enabled: bool = rule(boolean, True)
    uri: str | None = rule(optional(string), None)
    experiment: str = rule(string, "cnnlab")
    run_name: str | None = rule(optional(string), None)
    log_model: bool = rule(boolean, True)  # the trained model as an MLflow model at runs:/<id>/model
    register_as: str | None = rule(optional(registered_name), None)  # also a new version of this registered model
    # the run's parent: a sweep's callback sets it for each job (a command-line override); a single run may name one
    parent_run_id: str | None = rule(optional(string), None)
    server: bool = rule(boolean, False)  # tracking=server: a team's MLflow server, named by $MLFLOW_TRACKING_URI
    # a sweep on other machines (Ray with an address, SLURM) may record to a SQLite/file store only if
    # every node sees the same path (cnnlab.sweep.cluster.check_reachable_store)
    shared_filesystem: bool = rule(boolean, False)


def check_tracking(cfg, path: str = "tracking") -> TrackingConfig:
    spec = check_fields(cfg, rules(TrackingConfig), path)
    if spec["register_as"] and spec["enabled"] and not spec["log_model"]:
        raise ConfigError(f"{path}.register_as", f"{spec['register_as']!r} needs a logged model, "
                                                 f"but {path}.log_model is false")
    return TrackingConfig(**spec)


def tracking_uri(spec: TrackingConfig) -> str:
    """`tracking.uri` > $MLFLOW_TRACKING_URI > SQLite under <repo>/mlruns (MLflow 3 refuses a bare file store).

    With `tracking.server` (tracking=server) the URI must name an http(s) server: no SQLite fallback.
    """
    uri = resolve_uri(spec.uri)
    if spec.server:
        if not (spec.uri or os.environ.get(URI_ENV)):
            raise ConfigError(URI_ENV, "not set: tracking=server logs to the MLflow server it names "
                                       "(export MLFLOW_TRACKING_URI=http://host:port)")
        if urlsplit(uri).scheme not in ("http", "https"):
            raise ConfigError(URI_ENV if not spec.uri else "tracking.uri",
                              f"{redact_uri(uri)!r} is not an http(s):// MLflow server, which tracking=server needs")
    return uri


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """{'model': {'layers': {'conv1': {'filters': 64}}}} → {'model.layers.conv1.filters': '64'}"""
    out = {}
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(tree)
    return out


class Tracker:
    """One MLflow run driven through `MlflowClient` (no global active run, safe in sweeps).

    Example:
        >>> t = Tracker.start("sqlite:////tmp/x/mlflow.db", "demo", "my-run")  # doctest: +SKIP
        >>> t.log_metrics(100, {"val_accuracy": 0.9}); t.end("FINISHED")     # doctest: +SKIP
    """

    def __init__(self, client, run_id: str, seconds: float = 0.0):
        self.client, self.run_id = client, run_id
        self.seconds = seconds  # wall time spent in MLflow calls so far: the cost of tracking
        self.logged: set | None = None  # a resumed run: the (metric, step)s and params it already has

    @contextmanager
    def _clock(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, tags: dict | None = None,
              parent_run_id: str | None = None) -> "Tracker":
        """Create a run owned by this process (`cnnlab.record.liveness`); first end runs whose process died."""
        started = time.perf_counter()
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        from cnnlab.record.liveness import process_tags

        tags = {**(tags or {}), **process_tags()}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        with open_store(uri):  # a usable, whole store, or one line within seconds
            client = MlflowClient(tracking_uri=uri)
            experiment_id = ensure_experiment(client, experiment, artifact_location(uri))
            end_dead_runs(client, [experiment_id])
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id, time.perf_counter() - started)

    @classmethod
    def resume(cls, uri: str, find) -> "Tracker":
        """Reopen the KILLED/FAILED run that `find(client)` picks (`cnnlab.run.resume.find_run`) as RUNNING.

        What it has already recorded is not recorded again: MLflow refuses a param with a new
        value, and a metric step logged twice would show twice. This process becomes its owner.
        """
        started = time.perf_counter()
        from mlflow.tracking import MlflowClient

        from cnnlab.record.liveness import process_tags

        with open_store(uri):
            client = MlflowClient(tracking_uri=uri)
            for experiment in client.search_experiments():  # a run whose process was killed outright: KILLED now
                end_dead_runs(client, [experiment.experiment_id])
            run = find(client)
            tracker = cls(client, run.info.run_id)
            tracker.logged = {("param", k) for k in run.data.params}
            for key in run.data.metrics:
                tracker.logged |= {(key, m.step) for m in client.get_metric_history(run.info.run_id, key)}
            tracker.set_tags(process_tags())
            client.update_run(run.info.run_id, status="RUNNING")
        tracker.seconds = time.perf_counter() - started
        return tracker

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "Tracker":
        """An existing run, e.g. to end one whose recorder died."""
        from mlflow.tracking import MlflowClient

        return cls(MlflowClient(tracking_uri=uri), run_id)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items() if ("param", k) not in (self.logged or ())]
        with self._clock():  # MlflowClient.log_batch splits into requests of at most 100 params itself
            self.client.log_batch(self.run_id, params=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._clock():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, step: int, metrics: dict[str, float], timestamp: int | None = None) -> None:
        """One batched call per evaluation; non-finite values are left out (the run's tags tell why).

        `timestamp` (ms): when the points were measured, if not now (a spooled call, `cnnlab.spool`).
        """
        from mlflow.entities import Metric

        now = timestamp or int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if math.isfinite(v) and (k, step) not in (self.logged or ())]
        if items:
            with self._clock():
                self.client.log_batch(self.run_id, metrics=items)

    def log_artifacts(self, folder) -> None:
        """Upload a folder's files; on failure, remove what a local store got only part of."""
        with self._clock():
            try:
                self.client.log_artifacts(self.run_id, str(folder))
            except Exception:
                self._remove_partial(Path(folder))
                raise

    def log_model(self, folder, name: str = "model", step: int = 0, register_as: str | None = None) -> None:
        """Upload the MLflow model saved in `folder` as this run's logged model `name` (`record.logged_model`)."""
        from cnnlab.record.logged_model import log_model

        with self._clock():
            log_model(self.client, self.run_id, Path(folder), name, step, register_as)

    def log_datasets(self, inputs: list[dict]) -> None:
        """The run's data splits as MLflow dataset inputs (`cnnlab.record.logged_model.dataset_inputs`)."""
        from cnnlab.record.logged_model import log_datasets

        with self._clock():
            log_datasets(self.client, self.run_id, inputs)

    def _remove_partial(self, folder: Path) -> None:
        from urllib.parse import unquote

        if urlsplit(self.client.tracking_uri).scheme in ("http", "https"):
            return  # a server receives each file whole or not at all (and may be down: don't ask it)
        uri = urlsplit(self.client.get_run(self.run_id).info.artifact_uri)
        if uri.scheme not in ("", "file"):
            return  # a remote store receives each file whole or not at all
        stored = Path(unquote(uri.path))
        for source in folder.rglob("*"):
            copy = stored / source.relative_to(folder)
            if source.is_file() and copy.is_file() and copy.stat().st_size != source.stat().st_size:
                copy.unlink()

    def end(self, status: str, error: str | None = None) -> None:
        """The one place a run's final status is written (`error`: why it FAILED or was KILLED)."""
        if error:
            self.set_tags({"error": error[:5000]})
        self.client.set_terminated(self.run_id, status)


def ensure_experiment(client, name: str, location: str | None) -> str:
    """The experiment's id, created with our artifact location if new (parallel jobs may race here)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        # the MLflow UI then opens it in its model-training view (metrics, params, artifacts)
        return client.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:
        found = client.get_experiment_by_name(name)  # another process created it first
        if found:
            return found.experiment_id
        raise


def child_runs(client, parent_id: str) -> list:
    """The runs under a sweep's parent run, oldest first: the one query for a sweep's jobs."""
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10000)


def job_key(overrides) -> str:
    """A sweep job's identity across attempts: its overrides (a list, or the `hydra.overrides` tag), sorted,
    without `resume`. Every child run has the tag from its creation on.

    >>> job_key(["trainer.seed=2", "resume=last", "init=he"])
    'init=he trainer.seed=2'
    """
    if isinstance(overrides, str):
        overrides = overrides.split(" ")
    return " ".join(sorted(o for o in overrides if o and o.split("=", 1)[0].lstrip("+~") != "resume"))


def job_runs(client, parent_id: str, overrides) -> list:
    """The child runs of the sweep job with these overrides, newest last."""
    key = job_key(overrides)
    return [r for r in child_runs(client, parent_id) if job_key(r.data.tags.get("hydra.overrides", "")) == key]


def end_dead_runs(client, experiment_ids: list[str], parent_run_id: str | None = None) -> list[str]:
    """End KILLED every RUNNING run (of a sweep's parent, if given) whose process on this host is gone; their ids."""
    from cnnlab.record.liveness import HOST, PID, owner_alive

    where = "attributes.status = 'RUNNING'"
    if parent_run_id:
        where += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    ended = []
    for run in client.search_runs(experiment_ids, filter_string=where, max_results=1000):
        tags = run.data.tags
        if owner_alive(tags):
            continue
        why = tags.get("error") or f"its process {tags[PID]} on {tags[HOST]} ended without ending the run (killed)"
        Tracker(client, run.info.run_id).end("KILLED", why)
        ended.append(run.info.run_id)
    return ended
