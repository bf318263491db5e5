"""`python -m cnnlab.ui`: MLflow's UI on the store that runs log to, from any folder.

The store is the one `python run.py` picks without `tracking.uri`: `$MLFLOW_TRACKING_URI`,
else `<repo>/mlruns/mlflow.db` (an absolute path, so the working folder does not matter).
Arguments go on to `mlflow ui` (e.g. `--port 5001`); it listens on 127.0.0.1 unless
`--host` says otherwise, with one worker process unless `--workers` says otherwise
(MLflow's default of 4 each import MLflow: slower to start, for one user's browser).
`--experiment NAME` (cnnlab's own; default `cnnlab`) picks the experiment whose runs the URL opens.
A tracking server needs no local UI: its address is printed.

The console shows two lines of cnnlab's own: where MLflow's log goes, then, once the server
answers, the one URL to open. MLflow 3's UI opens on its GenAI pages unless the URL asks for
the model-training view (`workflowType=machine_learning`; without it the browser's last
choice, GenAI in a fresh browser), so the URL is the experiment's runs tab with that parameter,
and with a shared view whose table shows the headline metrics (`test_accuracy`, `val_accuracy`,
`test_loss`, `val_loss`: MLflow shows no metric column by default):

    http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=cnnlab-columns

The page then says "You're viewing a shared view"; the columns you pick are yours once you save them
(`Override saved view`) or leave it (`Exit shared view`).

MLflow's and uvicorn's INFO lines and Python's deprecation warnings go to the log file
(`ui.log` beside the SQLite store, else in the temporary folder).

Example:
    python -m cnnlab.ui                 # http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=...
    python -m cnnlab.ui --port 5001 --experiment ltfn_init
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cnnlab.record.store import redact_uri, resolve_uri, sqlite_path

EXPERIMENT = "cnnlab"  # conf/tracking/mlflow.yaml's experiment
VIEW = "workflowType=machine_learning"  # MLflow 3.x UI: the model-training view, not GenAI
# The runs table's columns. MLflow's UI shows no metric column until one is ticked under Columns, and keeps
# that choice in the browser; the one way a URL can bring columns is a shared view: an experiment tag
# `mlflow.sharedViewState.<key>` holding the view (JSON) and `viewStateShareKey=<key>` in the URL.
# (The Dataset column, one of MLflow's defaults, is left out: it is wide and pushes the metrics off screen.)
SHARE_KEY = "cnnlab-columns"
COLUMNS = ["metrics.`test_accuracy`", "metrics.`val_accuracy`", "metrics.`test_loss`", "metrics.`val_loss`"]
START_SECONDS = 300  # a loaded 2-core machine takes ~85 s to start MLflow's server


def _given(argv: list[str], *flags: str) -> bool:
    return any(a in flags or a.startswith(tuple(f + "=" for f in flags)) for a in argv)


def _value(argv: list[str], default: str, *flags: str) -> str:
    for i, a in enumerate(argv):
        if a in flags and i + 1 < len(argv):
            return argv[i + 1]
        for f in flags:
            if a.startswith(f + "="):
                return a[len(f) + 1:]
    return default


def command(argv: list[str]) -> list[str] | None:
    """The `mlflow ui` command line for the default store, or None for a tracking server.

    >>> command(["--port", "5001"])[-6:]  # doctest: +SKIP
    ['--host', '127.0.0.1', '--workers', '1', '--port', '5001']
    """
    uri = resolve_uri(None)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    defaults = (([] if _given(argv, "--host", "-h") else ["--host", "127.0.0.1"])
                + ([] if _given(argv, "--workers", "-w") else ["--workers", "1"]))
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, *defaults, *argv]


def base_url(argv: list[str]) -> str:
    """Where a browser on this machine reaches the UI that `argv` starts.

    >>> base_url(["--port", "5001"]), base_url(["--host=0.0.0.0"])
    ('http://127.0.0.1:5001', 'http://127.0.0.1:5000')
    """
    host = _value(argv, "127.0.0.1", "--host", "-h")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{_value(argv, '5000', '--port', '-p')}"


def runs_url(base: str, experiment_id: str | None, share_key: str | None = None) -> str:
    """The URL of an experiment's runs in the model-training view (the experiments list without an id).

    >>> runs_url("http://127.0.0.1:5000", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning'
    >>> runs_url("http://127.0.0.1:5000", "1", "cnnlab-columns")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=cnnlab-columns'
    """
    if not experiment_id:
        return f"{base}/#/experiments?{VIEW}"
    shared = f"&viewStateShareKey={share_key}" if share_key else ""
    return f"{base}/#/experiments/{experiment_id}/runs?{VIEW}{shared}"


def share_columns(base: str, experiment_id: str) -> str | None:
    """Store the runs table's default columns as the experiment's shared view; its key, or None if refused."""
    body = json.dumps({"experiment_id": experiment_id, "key": f"mlflow.sharedViewState.{SHARE_KEY}",
                       "value": json.dumps({"selectedColumns": COLUMNS})}).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/set-experiment-tag", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310 - the UI this command started
            return SHARE_KEY
    except OSError:  # a read-only store, a server that refuses: the table without metric columns
        return None


def log_path(uri: str, port: str) -> Path:
    """`ui.log` beside a SQLite store (`ui-<port>.log` for another port than 5000), else in the temporary folder."""
    name = "ui.log" if port == "5000" else f"ui-{port}.log"
    db = sqlite_path(uri)
    return db.parent / name if db is not None else Path(tempfile.gettempdir()) / f"cnnlab-{name}"


def split_args(argv: list[str]) -> tuple[str, list[str]]:
    """cnnlab's `--experiment NAME` apart from `mlflow ui`'s arguments.

    >>> split_args(["--experiment", "ltfn_init", "--port", "5001"])
    ('ltfn_init', ['--port', '5001'])
    """
    name, rest, skip = EXPERIMENT, [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == "--experiment" and i + 1 < len(argv):
            name, skip = argv[i + 1], True
        elif a.startswith("--experiment="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
    return name, rest


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the UI this command started
        return json.load(r) if "json" in r.headers.get("Content-Type", "") else r.read()


def experiment_id(base: str, name: str) -> str | None:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        return _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    except (OSError, KeyError, ValueError):  # 404: no run has been logged to it yet
        return None


def _why(path: Path, start: int) -> str:
    """What this start of the server wrote last about an error (its log from `start` on), without timestamps."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "ERROR" in line or "Error" in line] or lines[-1:]
    return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (ERROR:?)?\s*", "", errors[-1]) if errors else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, argv = split_args(argv)
    cmd = command(argv)
    if cmd is None:
        print(f"runs log to the tracking server {redact_uri(resolve_uri(None))}: open that address in a browser")
        return 0
    if _given(argv, "--help"):
        os.execv(cmd[0], cmd)
    uri, base = resolve_uri(None), base_url(argv)
    log = log_path(uri, _value(argv, "5000", "--port", "-p"))
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"MLflow UI on {redact_uri(uri)} starting (its log: {log}; Ctrl-C stops it)", flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}  # starlette's, in MLflow's server
    with open(log, "ab") as out:
        start = out.tell()
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    # Ctrl-C reaches the server too (same process group) and it stops itself; SIGTERM to us alone is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.send_signal(signum))
    deadline = time.monotonic() + START_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        try:
            _get(f"{base}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    if server.poll() is not None:
        why = _why(log, start)
        hint = "; --port N picks another port" if "address already in use" in why else ""
        print(f"error: mlflow ui stopped: {why or f'exit code {server.returncode}'}{hint} (its log: {log})",
              file=sys.stderr)
        return 2
    found = experiment_id(base, name)
    key = share_columns(base, found) if found else None
    where = f"runs of experiment {name!r}" if found else f"experiments (no {name!r} yet: runs create it)"
    print(f"open {runs_url(base, found, key)}   ({where}, model training view)", flush=True)
    code = server.wait()
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main())
