"""Real Hydra multiruns in a subprocess, 2 parallel joblib jobs, and what the MLflow store holds after."""

from __future__ import annotations

import csv
import io

import pytest
from conftest import run_cli

# four jobs: two train (he, glorot), two are an invalid combination (a 99x99 valid kernel on 28x28 images)
SWEEP = ["-m", "model=tiny", "dataset=synthetic", "dataset.train_size=400", "dataset.val_size=100",
         "dataset.test_size=100", "optimizer=adam", "optimizer.lr=0.01", "trainer.steps=10", "trainer.eval_every=5",
         "trainer.verbose=0", "model.layers.conv1.padding=valid", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2"]


def store_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = [*SWEEP, "init=he,glorot", "model.layers.conv1.kernel_size=3,99", f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp}/multirun"]
    first = run_cli(*args, timeout=600)
    second = run_cli(*args[:-3], "init=he", "model.layers.conv1.kernel_size=3", f"tracking.uri={uri}",
                     f"hydra.sweep.dir={tmp}/multirun2", timeout=600)
    return uri, first, second


def test_sweep_exits_0_and_counts_jobs(sweep):
    _, first, _ = sweep
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 4 jobs, 2 finished, 2 failed" in first.stdout
    assert "database is locked" not in first.stderr + first.stdout
    assert "already exists" not in first.stderr + first.stdout
    # the invalid jobs said why, in one line each
    invalid = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(invalid) == 2 and all("kernel_size: 99 does not fit the 28×28 input" in line for line in invalid)


def test_one_parent_with_a_child_per_job(sweep):
    uri, _, _ = sweep
    client, parents, children = store_runs(uri)
    assert len(parents) == 2  # the second sweep made its own parent: nothing overwritten
    first_parent = min(parents, key=lambda r: r.info.start_time)
    mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == first_parent.info.run_id]
    assert len(mine) == 4
    by_name = {c.info.run_name: c for c in mine}
    assert set(by_name) == {"init=he,model.layers.conv1.kernel_size=3", "init=glorot,model.layers.conv1.kernel_size=3",
                            "init=he,model.layers.conv1.kernel_size=99",
                            "init=glorot,model.layers.conv1.kernel_size=99"}
    for name, child in by_name.items():
        if name.endswith("=99"):
            assert child.info.status == "FAILED"
            assert "does not fit" in child.data.tags["error"]
        else:
            assert child.info.status == "FINISHED"
            assert 0 <= child.data.metrics["test_accuracy"] <= 1
    assert first_parent.info.status == "FINISHED"
    assert first_parent.data.tags["jobs.finished"] == "2" and first_parent.data.tags["jobs.failed"] == "2"
    assert "init=he,glorot" in first_parent.data.params["sweep.overrides"]


def test_summary_table_matches_children(sweep, tmp_path):
    from mlflow.artifacts import download_artifacts

    uri, _, _ = sweep
    client, parents, children = store_runs(uri)
    parent = min(parents, key=lambda r: r.info.start_time)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "val_accuracy.png"} <= names
    path = download_artifacts(run_id=parent.info.run_id, artifact_path="summary.csv", tracking_uri=uri,
                              dst_path=str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(open(path).read())))
    stored = {c.info.run_id: c for c in children}
    assert len(rows) == 4
    for row in rows:
        child = stored[row["run_id"]]
        assert row["status"] == child.info.status
        if child.info.status == "FINISHED":
            assert float(row["test_accuracy"]) == pytest.approx(child.data.metrics["test_accuracy"])
            assert float(row["val_loss"]) == pytest.approx(child.data.metrics["val_loss"])
        else:
            assert row["test_accuracy"] == ""


def test_report_compares_the_jobs_by_their_swept_values(sweep, tmp_path):
    """`python -m cnnlab.report`: a row per job under its swept values, sorted by the metric; two plots."""
    from cnnlab.report import main

    uri, _, _ = sweep
    client, parents, children = store_runs(uri)
    parent = min(parents, key=lambda r: r.info.start_time)
    out = tmp_path / "report"
    assert main(["--tracking-uri", uri, "--sweep", parent.info.run_id, "--out", str(out)]) == 0
    assert {"REPORT.md", "results.csv", "val_accuracy_curves.png", "val_accuracy_by_job.png"} <= \
        {f.name for f in out.iterdir()}
    table = [line for line in (out / "REPORT.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| init | model.layers.conv1.kernel_size | status | test_accuracy |")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    assert sorted((r[0], r[1], r[2]) for r in rows) == [("glorot", "3", "FINISHED"), ("glorot", "99", "FAILED"),
                                                        ("he", "3", "FINISHED"), ("he", "99", "FAILED")]
    mine = {c.info.run_name: c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id}
    accuracies = [mine[f"init={r[0]},model.layers.conv1.kernel_size={r[1]}"].data.metrics.get("val_accuracy")
                  for r in rows]
    assert [a is None for a in accuracies] == [False, False, True, True]  # measured first, best first
    assert accuracies[0] >= accuracies[1]
    assert main(["--tracking-uri", uri, "--sweep", "no-such-run", "--out", str(tmp_path / "x")]) == 2


def test_second_sweep_is_separate(sweep):
    uri, _, second = sweep
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep: 1 jobs, 1 finished, 0 failed" in second.stdout


def test_diverging_job_is_failed_and_sweep_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = run_cli("-m", "model=ltfn5", "dataset=synthetic", "dataset.train_size=300", "dataset.val_size=100",
                "dataset.test_size=100", "init=normal,he", "optimizer.lr=0.1", "trainer.steps=10", "trainer.verbose=0",
                "hydra.launcher.n_jobs=2", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sweep: 2 jobs, 1 finished, 1 failed" in p.stdout
    _, parents, children = store_runs(uri)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"init=normal": "FAILED", "init=he": "FINISHED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert failed.data.tags["diverged"] == "true"
    assert "diverged at step" in p.stdout  # the summary's note column
