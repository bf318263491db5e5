"""Seeds as statistics (cnnlab.stats): the t table, intervals, paired differences and the seed table."""

from __future__ import annotations

import math
import random

import pytest

from cnnlab.stats import interval, paired, seed_cells, seed_report, t975


def test_t_quantiles_match_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 5, 9, 19, 29, 30, 35, 45, 80, 200, 10_000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df


def test_interval_is_the_t_interval_of_the_mean():
    xs = [0.1, 0.4, 0.35, 0.2, 0.3]
    s = interval(xs)
    mean = sum(xs) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / 4)
    assert (s["n"], s["mean"], s["std"]) == (5, pytest.approx(mean), pytest.approx(std))
    assert s["hi"] - s["mean"] == pytest.approx(2.776 * std / math.sqrt(5))
    assert interval([0.5]) == {"n": 1, "mean": 0.5, "std": None, "lo": None, "hi": None}


def test_a_95_percent_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = sum(1 for _ in range(2000) if (lambda s: s["lo"] <= 1.0 <= s["hi"])(
        interval([rng.gauss(1.0, 0.3) for _ in range(5)])))
    assert 0.93 < covered / 2000 < 0.97


def test_paired_difference_uses_only_the_shared_seeds_and_removes_the_seed_effect():
    a = {1: 0.80, 2: 0.90, 3: 0.70, 4: 0.99}
    b = {1: 0.78, 2: 0.88, 3: 0.68}  # a seed effect far larger than the difference
    d = paired(a, b)
    assert d["n"] == 3 and d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(0.02) and d["lo"] == pytest.approx(0.02) == d["hi"]
    unpaired = interval([0.80, 0.90, 0.70])
    assert unpaired["lo"] < 0.78 < unpaired["hi"]  # unpaired, the same runs could not tell the cells apart


def test_seed_table_groups_by_the_other_keys_and_skips_unfinished_runs():
    rows = [{"run": f"init={i},trainer.seed={s}", "status": st, "val_accuracy": v}
            for i, s, st, v in [("he", 1, "FINISHED", 0.9), ("he", 2, "FINISHED", 0.92), ("glorot", 1, "FINISHED", 0.8),
                                ("glorot", 2, "FINISHED", 0.83), ("glorot", 3, "FAILED", None)]]
    cells = seed_cells(rows, "val_accuracy")
    assert cells == {(("init", "he"),): {"1": 0.9, "2": 0.92}, (("init", "glorot"),): {"1": 0.8, "2": 0.83}}
    text = seed_report(rows)
    assert "| init=he | 2 | 0.9100 |" in text
    assert "| init=he − init=glorot | 2 | 0.0950 |" in text
    assert seed_report([{"run": "init=he", "status": "FINISHED", "val_accuracy": 0.9}]) == ""


def test_the_report_of_a_seed_sweep_has_the_intervals_and_a_study_its_header():
    from types import SimpleNamespace

    from cnnlab.report import markdown

    rows = [{"run": f"init={i},trainer.seed={s}", "values": {"init": i, "trainer.seed": str(s)}, "status": "FINISHED",
             "val_accuracy": v}
            for i, s, v in [("he", 1, 0.9), ("he", 2, 0.92), ("normal", 1, 0.5), ("normal", 2, 0.6)]]
    parent = SimpleNamespace(info=SimpleNamespace(run_name="sweep", run_id="p1"), data=SimpleNamespace(
        tags={"optuna.study_name": "s", "optuna.storage": "sqlite:///x.db", "optuna.trials": "4",
              "optuna.trials_complete": "4", "optuna.trials_pruned": "0", "optuna.trials_fail": "0",
              "optuna.best_trial": "1", "optuna.best.init": "he"}, metrics={"best_value": 0.92}))
    text = markdown(parent, rows, ["init", "trainer.seed"], "val_accuracy", [])
    assert "Optuna study `s` in `sqlite:///x.db`: 4 trials (4 complete, 0 pruned, 0 failed); best trial 1: 0.9200 " \
           "with init=he." in text
    assert "| init=he | 2 | 0.9100 | 0.0141 |" in text and "| init=he − init=normal | 2 | 0.3600 |" in text
