"""`python -m cnnlab.ui` serves MLflow's UI on the runs' store, started from any folder, and prints the one
URL that opens the experiment's runs in the model-training view; a real headless Chromium checks what that
URL shows in a fresh browser (Debian's `chromium`; `.ci/run` installs it, the browser test skips without it).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest
from conftest import REPO

MAKE_RUN = """
import mlflow, sys
mlflow.set_experiment("cnnlab")  # the store: $MLFLOW_TRACKING_URI, as run.py and cnnlab.ui pick it
with mlflow.start_run(run_name=sys.argv[1]):
    for step in (0, 50, 100):
        mlflow.log_metric("val_accuracy", 0.5 + step / 300, step=step)
    mlflow.log_metrics({"test_accuracy": 0.8125, "test_loss": 0.5})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(stream, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1)
        if ready:
            return stream.readline().decode()
    return None


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    env.pop("CNNLAB_VERBOSE", None)
    made = subprocess.run([sys.executable, "-c", MAKE_RUN, "first-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    port = free_port()
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.ui", "--port", str(port)], cwd=elsewhere, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 300  # ~85 s at load 10
        while len(lines) < 2 and proc.poll() is None:
            line = read_line(proc.stdout, deadline)
            if not line:
                break
            lines.append(line.rstrip("\n"))
        assert len(lines) == 2, f"{lines} {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
        url = lines[1].split()[1]
        yield SimpleNamespace(proc=proc, lines=lines, url=url, base=f"http://127.0.0.1:{port}", env=env,
                              elsewhere=elsewhere, store=tmp)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the UI and the server it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_ui_opens_the_runs_store_from_another_folder(ui):
    experiment = get_json(f"{ui.base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cnnlab")["experiment"]
    assert ui.lines[0].startswith(f"MLflow UI on sqlite:///{ui.store}/mlflow.db starting (its log: ")
    # the one URL: the experiment's runs tab, MLflow 3's model-training view, the table's metric columns
    assert ui.url == (f"{ui.base}/#/experiments/{experiment['experiment_id']}/runs"
                      "?workflowType=machine_learning&viewStateShareKey=cnnlab-columns"), ui.lines
    shared = {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.sharedViewState.cnnlab-columns"]
    assert "metrics.`test_accuracy`" in json.loads(shared)["selectedColumns"]
    with urllib.request.urlopen(ui.url.split("#")[0], timeout=10) as r:  # the page itself (HTTP level)
        assert r.status == 200 and b"<title>MLflow</title>" in r.read()
    assert not (ui.elsewhere / "mlruns").exists()  # nothing created where it was started
    assert (ui.store / f"ui-{ui.base.rsplit(':', 1)[1]}.log").read_text().count("INFO") >= 3  # MLflow's lines


def test_mlflow_view_run_lines_only_with_cnnlab_verbose(ui):
    """MLflow prints "🏃 View run … / 🧪 View experiment …" for runs on a tracking server; cnnlab keeps it quiet."""
    quiet = ("from cnnlab.cli import quiet_mlflow_console\nquiet_mlflow_console()\n"
             f"import mlflow\nmlflow.set_tracking_uri({ui.base!r})\n" + MAKE_RUN)
    printed = {}
    for verbose in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", quiet, f"verbose-{verbose}"], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**ui.env, "CNNLAB_VERBOSE": verbose})
        assert done.returncode == 0, done.stderr[-2000:]
        printed[verbose] = done.stdout
    assert "View run" not in printed["0"] and "View experiment" not in printed["0"]
    assert "🏃 View run verbose-1 at: " in printed["1"]


def chromium(url: str, *how: str) -> str:
    """Chromium headless in a fresh profile (no local storage: a new user's browser) after 15 s of page time."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-chromium-") as profile:
        done = subprocess.run(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=15000", *how, url],
            capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (Debian: apt-get install chromium)")
def test_a_fresh_browser_shows_the_runs_in_the_model_training_view(ui, tmp_path):
    experiment_id = re.search(r"/experiments/(\d+)/", ui.url).group(1)
    dom = chromium(ui.url, "--dump-dom")
    assert f"<title>Runs - Experiment {experiment_id} - MLflow</title>" in dom
    assert "first-run" in dom and "matching run" in dom  # the runs table, with the run in it
    assert 'col-id="metrics.`test_accuracy`"' in dom and "0.8125" in dom  # a metric column, its value
    for genai in ("Token Usage", "Detect Issues", "Traces 0", "Welcome to MLflow"):
        assert genai not in dom
    chromium(ui.url, f"--screenshot={tmp_path / 'runs.png'}")  # for a person to look at: pytest's tmp folder
    assert (tmp_path / "runs.png").stat().st_size > 10_000
    # the control: the same experiment without the view parameter opens on GenAI's overview of traces
    genai = chromium(ui.url.split("/runs?")[0], "--dump-dom")
    assert f"<title>Overview - Experiment {experiment_id} - MLflow</title>" in genai and "Token Usage" in genai


def test_console_is_cnnlabs_two_lines_and_sigterm_stops_the_server(ui):
    ui.proc.send_signal(signal.SIGTERM)  # to cnnlab.ui alone: it passes it on to MLflow's server
    out, err = ui.proc.communicate(timeout=60)
    assert out.decode() == "" and err.decode() == ""  # nothing after the two lines the fixture read
    assert len(ui.lines) == 2 and ui.lines[1].startswith("open http://127.0.0.1:")
    assert ui.proc.returncode == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ui.base}/health", timeout=5)


def test_a_server_that_stops_is_one_line_from_its_log(tmp_path):
    from cnnlab.ui import _why

    log = tmp_path / "ui.log"
    log.write_text("2026/12/06 04:00:00 ERROR:    an old start's error\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("2026/12/06 04:44:51 INFO:     Application startup complete.\n"
                "2026/12/06 04:44:51 ERROR:    [Errno 98] error while attempting to bind on address "
                "('127.0.0.1', 5084): address already in use\n"
                "2026/12/06 04:44:51 INFO:     Application shutdown complete.\n")
    assert _why(log, start) == ("[Errno 98] error while attempting to bind on address ('127.0.0.1', 5084): "
                                "address already in use")
