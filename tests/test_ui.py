"""`python -m cnnlab.ui` serves MLflow's UI on the runs' store, started from any folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_opens_the_runs_store_from_another_folder(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    made = subprocess.run([sys.executable, "-c", "from cnnlab.record.tracking import Tracker\n"
                           "t = Tracker.start(__import__('cnnlab.record.store').record.store.resolve_uri(None), 'cnnlab', 'r1')\n"
                           "t.end('FINISHED')"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    port = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ui = subprocess.Popen([sys.executable, "-m", "cnnlab.ui", "--port", str(port)], cwd=elsewhere, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, names = time.monotonic() + 240, None  # ~85 s at load 10
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=5) as r:
                    names = {e["name"] for e in json.load(r)["experiments"]}
                break
            except OSError:
                time.sleep(1)
        assert names is not None, f"the UI did not answer: {ui.stderr.read().decode()[-2000:] if ui.poll() else ''}"
        assert "cnnlab" in names
        assert not (elsewhere / "mlruns").exists()  # nothing created where it was started
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # its own session: the UI and the server workers it started
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=20)
