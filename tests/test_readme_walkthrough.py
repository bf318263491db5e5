"""README's first hour, line by line, in a fresh `git clone` of this repository under /tmp.

Each step is a command as README writes it (the test first finds it in README.md, so a README edit
that changes a command fails here until this walk follows it), run by bash in the clone's folder,
with the exit code README promises. Departures from the letter, all to fit ~2 minutes on 2 cores:

- no `pip install -e .`: the clone runs on the interpreter running this test (PYTHONPATH=<clone>/src);
- training commands get a small budget appended: `trainer.steps=20 dataset.val_size=500
  dataset.test_size=500` (README's full run takes ~5 minutes);
- `python -m cnnlab.ui` and `mlflow models serve` get a free port instead of 5000/5001, so that a UI or
  server someone else runs on this machine is left alone; the UI is stopped after it prints its URL;
- `<run_id>` is the id of the run the training step printed;
- the data folder line is README's (`/work/shared/datasets`) where that folder exists, else the
  `CNNLAB_DATA_DIR` this test runs with.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BUDGET = " trainer.steps=20 dataset.val_size=500 dataset.test_size=500"

pytestmark = pytest.mark.slow


def in_readme(command: str) -> str:
    assert command in README, f"README no longer says: {command}"
    return command


def block_after(marker: str) -> str:
    """The first ```bash block after the line starting with `marker`."""
    lines = README[README.index(marker):].splitlines()
    start = lines.index("```bash") + 1
    return "\n".join(lines[start:lines.index("```", start)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    where = tmp_path_factory.mktemp("readme") / "cnnlab"  # /tmp/pytest-of-<user>/…: a folder of no importance
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True, timeout=120)
    return where


def test_readme_first_hour_from_a_fresh_clone(clone):
    started = time.monotonic()
    data_line = in_readme("export CNNLAB_DATA_DIR=/work/shared/datasets")
    if not Path("/work/shared/datasets/mnist.npz").is_file():
        data_line = f"export CNNLAB_DATA_DIR={shlex.quote(os.environ['CNNLAB_DATA_DIR'])}"
    # (PYTEST_CURRENT_TEST stays: MLflow sends no telemetry from tests)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CNNLAB_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(clone / "src"),
               TF_CPP_MIN_LOG_LEVEL="2")

    def bash(script: str, timeout: int = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"set -e\n{data_line}\n{script}"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=timeout)

    # Run: the LTFN fix, with a budget; meanwhile (a thread each: ~2 minutes in all on 2 loaded cores)
    # the config-only commands of "More:" and the typed mistakes of "Errors"
    train = in_readme("python run.py model=ltfn5 init=he          #")[:len("python run.py model=ltfn5 init=he")]
    with ThreadPoolExecutor(2) as pool:
        training = pool.submit(bash, train + BUDGET)
        for command in ("python run.py --cfg job", "python run.py model=ltfn5 init=he dry_run=true"):
            done = bash(in_readme(command))
            assert done.returncode == 0, (command, done.stderr[-3000:])
        for command in ("python run.py trainer.step=100", "python run.py trainer.steps==100"):
            line = README.split(f"$ {command}\n", 1)[1].splitlines()[0]  # the line README shows under it
            done = bash(in_readme(command))
            assert (done.returncode, done.stderr) == (2, line + "\n"), command
        done = training.result()
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = re.search(r"MLflow run ([0-9a-f]{32})$", done.stdout.strip()).group(1)
    assert "Traceback" not in done.stderr

    # Using a trained model: the serve block as one script, in a thread, while the UI starts
    serve = block_after("Serve it over REST").replace("<run_id>", run_id).replace("5001", str(free_port()))
    with ThreadPoolExecutor(1) as pool:
        serving = pool.submit(bash, serve, 240)

        # The UI: two lines of cnnlab's, the second the URL of the runs
        port = free_port()
        ui = subprocess.Popen(["bash", "-c", f"{data_line}\nexec {in_readme('python -m cnnlab.ui')} --port {port}"],
                              cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
        try:
            lines, deadline = [], time.monotonic() + 180
            while len(lines) < 2 and time.monotonic() < deadline and ui.poll() is None:
                if select.select([ui.stdout], [], [], 1)[0]:
                    lines.append(ui.stdout.readline().decode())
            assert len(lines) == 2 and lines[1].startswith(f"open http://127.0.0.1:{port}/#/experiments/"), lines
            assert "/runs?workflowType=machine_learning" in lines[1]
            ui.send_signal(signal.SIGTERM)
            out, err = ui.communicate(timeout=60)
            assert (ui.returncode, out, err) == (0, b"", b"")
        finally:
            if ui.poll() is None:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait()
        done = serving.result()
    assert done.returncode == 0, done.stderr[-3000:]
    # the answer of curl (the served model's Keras progress bar also lands on this stdout, before it)
    predictions = done.stdout[done.stdout.index('{"predictions": [['):]
    assert predictions.count("], [") == 9  # ten images

    # nothing stray in the clone: no mlflow.db in its root, no file git would show
    assert not (clone / "mlflow.db").exists()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True,
                          text=True).stdout == ""
    print(f"README walk: {time.monotonic() - started:.0f} s")
