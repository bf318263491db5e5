"""What a run prints: progress in steps of its budget, no start-up noise from the native libraries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

EXPECTED = [
    re.compile(r"step 100/200  train_loss \S+  train_accuracy \S+  val_loss \S+  val_accuracy \S+"),
    re.compile(r"step 200/200  train_loss \S+  train_accuracy \S+  val_loss \S+  val_accuracy \S+"),
    re.compile(r"tiny-he-sgd: test_accuracy=\S+ test_loss=\S+ \(200 steps in \S+ s\), MLflow run [0-9a-f]{32}"),
]


def test_a_run_prints_progress_lines_and_no_start_up_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CNNLAB_VERBOSE")}
    p = subprocess.run([sys.executable, "run.py", "model=tiny", "dataset=synthetic", "trainer.steps=200",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/out"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = (p.stdout + p.stderr).splitlines()  # not a terminal: verbose=auto prints a line per evaluation
    assert len(lines) == len(EXPECTED), "\n".join(lines)
    for pattern, line in zip(EXPECTED, lines):
        assert pattern.fullmatch(line), line

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 20  # trainer.log_every=10

    # Hydra's run folder keeps the run's log; the MLflow run has it up to its upload
    local = (tmp_path / "out" / "run.log").read_text()
    assert all(line in local for line in lines)
    uploaded = Path(client.download_artifacts(run.info.run_id, "run.log", str(tmp_path))).read_text()
    assert lines[0] in uploaded and lines[1] in uploaded
