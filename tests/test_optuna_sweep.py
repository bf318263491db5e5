"""hydra/sweeper=cnnlab_optuna end to end: a real (tiny) study with pruning, 2 parallel workers, a killed
sweep's trial recovered, and a resume that continues the same study to a larger n_trials."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import run_cli

STUDY = "test-study"


def sweep(tmp_path, n_trials: int, *extra: str):
    return run_cli(
        "-m", "hydra/sweeper=cnnlab_optuna", "model=tiny", "dataset=synthetic", "optimizer=adam",
        "trainer.steps=6", "trainer.eval_every=2", "tracking.log_model=false", "tracking.experiment=optuna_test",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun",
        f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={STUDY}",
        "hydra.sweeper.sampler.type=random", "hydra.sweeper.pruner.n_startup_trials=1",
        # a learning rate too small to learn in 6 steps is a trial the median pruner stops
        "hydra.sweeper.params={optimizer.lr: 'choice(0.00001, 0.02)', init: 'choice(he, glorot)'}",
        *extra, timeout=300)


def test_a_study_prunes_runs_in_parallel_recovers_a_killed_trial_and_resumes(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from cnnlab.record.liveness import HOST, PID, STARTED

    first = sweep(tmp_path, 4, "hydra.launcher.n_jobs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 trials done; 4 to run, 2 at a time, pruner median" in first.stdout
    storage = f"sqlite:///{tmp_path}/optuna.db"  # beside MLflow's store, its own database
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert len(study.trials) == 4 and not study.get_trials(states=(TrialState.RUNNING,))

    # a sweep killed outright left a trial RUNNING: its process is gone
    killed = study.ask({"optimizer.lr": optuna.distributions.CategoricalDistribution([0.00001, 0.02]),
                        "init": optuna.distributions.CategoricalDistribution(["he", "glorot"])})
    killed.set_user_attr("cnnlab.owner", {HOST: socket.gethostname(), PID: "999999999", STARTED: "1"})
    # and one on another host, whose process cannot be looked at: its last heartbeat is what tells
    beating = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=2)
    elsewhere = optuna.load_study(study_name=STUDY, storage=beating).ask(killed.distributions)
    elsewhere.set_user_attr("cnnlab.owner", {HOST: "elsewhere.invalid", PID: "1", STARTED: "1"})
    beating.record_heartbeat(beating.get_trial_id_from_study_id_trial_number(
        beating.get_study_id_from_name(STUDY), elsewhere.number))
    time.sleep(3)  # past its grace period

    # the same study again, to 6 trials, with a launcher that runs a list at a time (batches)
    second = sweep(tmp_path, 6, "hydra/launcher=basic", "hydra.sweeper.heartbeat_interval=1",
                   "hydra.sweeper.grace_period=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 trials done, 2 left RUNNING by a killed sweep now FAIL and retried; 2 to run" in second.stdout
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    for planted in (killed, elsewhere):
        assert trials[planted.number].state == TrialState.FAIL
        retry = [t for t in trials if t.user_attrs.get("cnnlab.retry_of") == planted.number]
        assert len(retry) == 1 and retry[0].params == planted.params and retry[0].state != TrialState.FAIL
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))  # 6 counted + 2 failed
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.intermediate_values) for t in trials]
    assert all(t.intermediate_values for t in trials if t.state != TrialState.FAIL)  # reported at each evaluation

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("optuna_test")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("cnnlab.sweep") == "parent"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.data.tags["optuna.study_name"] == STUDY and newest.data.tags["optuna.storage"] == storage
    best = optuna.load_study(study_name=STUDY, storage=storage).best_trial
    assert newest.data.metrics["best_value"] == pytest.approx(best.value)
    assert newest.data.tags["optuna.best.init"] == best.params["init"]
    files = {f.path for f in client.list_artifacts(newest.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/intermediate_values.png"} <= files
    children = [r for r in runs if r.data.tags.get("cnnlab.sweep") != "parent"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [
        t.number for t in trials if t.number not in (killed.number, elsewhere.number)]
    for run in children:
        trial = trials[int(run.data.tags["optuna.trial"])]
        assert run.info.status == "FINISHED"
        assert ("pruned_at_step" in run.data.tags) == (trial.state == TrialState.PRUNED)
        if trial.state == TrialState.PRUNED:  # stopped at once: no step past the one it was pruned at
            assert int(run.data.tags["pruned_at_step"]) == max(trial.intermediate_values) < 6


def test_a_resumed_study_does_not_propose_its_first_trials_again(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from cnnlab.sweep.study import open_study

    spec = {"direction": "maximize", "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 10}}
    space = {"optimizer.lr": FloatDistribution(1e-4, 0.3, log=True), "init": CategoricalDistribution(["he", "glorot"])}
    first = open_study(f"sqlite:///{tmp_path}/optuna.db", STUDY, spec, 2)
    for value in (0.5, 0.6, 0.7):
        first.tell(first.ask(space), value)
    before = [t.params for t in first.trials]
    resumed = open_study(f"sqlite:///{tmp_path}/optuna.db", STUDY, spec, 2)
    assert resumed.ask(space).params not in before  # the seed alone would draw trial 0's again
    fresh = open_study(f"sqlite:///{tmp_path}/other.db", STUDY, spec, 2)  # and it still reproduces a new study
    assert fresh.ask(space).params == before[0]


@pytest.mark.parametrize("override, expected", [
    ("hydra.sweeper.pruner.type=bogus",
     "error: hydra.sweeper.pruner.type: 'bogus' is not one of: median, hyperband, none"),
    ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials: 0 is not a positive integer"),
    ("hydra.sweeper.grace_period=30", "error: hydra.sweeper.grace_period: 30 must exceed heartbeat_interval (30)"),
    ("dry_run=true", "error: dry_run: true: an Optuna study's trials must train"),
])
def test_a_bad_study_setting_is_one_line_and_exit_2_before_any_run(tmp_path, override, expected):
    p = run_cli("-m", "+experiment=optuna_lr_init", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                f"hydra.sweep.dir={tmp_path}/multirun", override, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(expected), p.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()  # no parent run was made for it


def test_a_live_sweeps_heartbeat_keeps_its_trials_and_a_stopped_ones_trials_fail(tmp_path):
    """`cnnlab.sweep.heartbeat`: while the sweeper beats, another host's `fail_stale_trials` leaves its trial be;
    once it stops beating, the trial fails after the grace period."""
    import optuna
    from optuna.trial import TrialState

    from cnnlab.run.trial import open_storage
    from cnnlab.sweep.heartbeat import Heartbeat, fail_stale

    failed = []
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", (1, 2), lambda s, t: failed.append(t.number))
    study = optuna.create_study(study_name="beat", storage=storage)
    with Heartbeat(storage, "beat") as beat:
        beat.add(study.ask().number)
        time.sleep(3.5)  # past the grace period, beaten every second
        fail_stale(study)
        assert [t.state for t in study.trials] == [TrialState.RUNNING] and not failed
    time.sleep(3)
    fail_stale(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL] and failed == [0]
