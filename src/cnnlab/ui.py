"""`python -m cnnlab.ui`: MLflow's UI on the store that runs log to, from any folder.

The store is the one `python run.py` picks without `tracking.uri`: `$MLFLOW_TRACKING_URI`,
else `<repo>/mlruns/mlflow.db` (an absolute path, so the working folder does not matter).
Arguments go on to `mlflow ui` (e.g. `--port 5001`); it listens on 127.0.0.1 unless
`--host` says otherwise, with one worker process unless `--workers` says otherwise
(MLflow's default of 4 each import MLflow: slower to start, for one user's browser). A tracking server needs no local UI: its address is printed.

Example:
    python -m cnnlab.ui                 # http://127.0.0.1:5000
    python -m cnnlab.ui --port 5001
"""

from __future__ import annotations

import os
import sys

from cnnlab.record.store import redact_uri, resolve_uri


def command(argv: list[str]) -> list[str] | None:
    """The `mlflow ui` command line for the default store, or None for a tracking server.

    >>> command(["--port", "5001"])[-6:]  # doctest: +SKIP
    ['--host', '127.0.0.1', '--workers', '1', '--port', '5001']
    """
    uri = resolve_uri(None)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    def given(*flags):
        return any(a in flags or a.startswith(tuple(f + "=" for f in flags)) for a in argv)

    defaults = ([] if given("--host", "-h") else ["--host", "127.0.0.1"]) + ([] if given("--workers", "-w")
                                                                            else ["--workers", "1"])
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, *defaults, *argv]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = command(argv)
    if cmd is None:
        print(f"runs log to the tracking server {redact_uri(resolve_uri(None))}: open that address in a browser")
        return 0
    os.execv(cmd[0], cmd)  # the UI's process replaces this one: Ctrl-C and kill reach it directly


if __name__ == "__main__":
    sys.exit(main())
