"""The MLflow store a run records to: which one, and whether it can be used, decided in seconds.

Which store: `tracking.uri`, else $MLFLOW_TRACKING_URI, else SQLite under
`<repo>/mlruns`. `check_store` tells in a second or a few whether the store
answers (a run calls it before loading data: an unusable store is one line,
not MLflow's minutes of retries). `open_store` wraps the creation of a run or
sweep: for SQLite it creates or repairs the schema under a file lock beside
the database (parallel first runs on a fresh store raced in MLflow's
migrations and left `_alembic_tmp_*` tables behind).

Example:
    >>> resolve_uri(None).startswith("sqlite:///")     # doctest: +SKIP
    True
    >>> with open_store("sqlite:////tmp/x/mlflow.db"):   # doctest: +SKIP
    ...     client = MlflowClient("sqlite:////tmp/x/mlflow.db")
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cnnlab.config.redact import REDACTED, redact_uri  # noqa: F401 (part of this module's API)
from cnnlab.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DB = REPO_ROOT / "mlruns" / "mlflow.db"
URI_ENV = "MLFLOW_TRACKING_URI"
CONNECT_SECONDS = 5  # one attempt to reach a server or database
ANSWER_SECONDS = 8  # a busy server checking a password (a slow hash by design) answers within this
LOCK_SECONDS = 120  # another process creating or migrating the same store


def resolve_uri(configured: str | None) -> str:
    """`tracking.uri` > $MLFLOW_TRACKING_URI > sqlite:///<repo>/mlruns/mlflow.db."""
    return configured or os.environ.get(URI_ENV) or f"sqlite:///{DEFAULT_DB}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite database (<dir>/artifacts); a tracking server decides for itself."""
    path = sqlite_path(uri)
    return (path.parent / "artifacts").resolve().as_uri() if path else None


def _refuse(uri: str, why: str) -> ConfigError:
    return ConfigError("tracking.uri", f"cannot record to MLflow at {redact_uri(uri)!r}: {why}")


def check_store(uri: str) -> None:
    """Raise ConfigError (key `tracking.uri`) unless the store answers; one bounded attempt, no MLflow import."""
    scheme = urlsplit(uri).scheme
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
    elif scheme in ("http", "https"):
        _probe_server(uri)
    elif scheme not in ("", "file"):  # a file store: MLflow itself says whether it allows it
        _probe_database(uri)


@contextlib.contextmanager
def open_store(uri: str):
    """`check_store`, then for SQLite hold its lock with the schema whole; for servers, bounded retries."""
    check_store(uri)
    path = sqlite_path(uri)
    if path is not None:
        with _sqlite_lock(uri, path):
            _repair_half_migrated(uri, path)
            yield
    else:
        with quick_http():
            yield


def _check_sqlite(uri: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _refuse(uri, f"cannot create its folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        raise _refuse(uri, f"{path if path.exists() else path.parent} is not writable")


@contextlib.contextmanager
def _sqlite_lock(uri: str, path: Path):
    """The store's file lock (`mlflow.db.lock` beside it), held while the schema is created or repaired."""
    import filelock

    lock = filelock.FileLock(path.with_name(path.name + ".lock"))
    try:
        lock.acquire(timeout=LOCK_SECONDS)
    except filelock.Timeout:
        raise _refuse(uri, f"another process has held {path.name}.lock for {LOCK_SECONDS} s") from None
    except OSError as e:
        raise _refuse(uri, f"cannot write beside it ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()


def _repair_half_migrated(uri: str, path: Path) -> None:
    """Drop `_alembic_tmp_*` tables of an interrupted migration, then finish it with MLflow's own upgrade."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            if not leftovers:
                return
            if "alembic_version" not in tables:
                raise _refuse(uri, f"{path} holds a half-created schema ({', '.join(leftovers)}); "
                                   "move the file aside to start a new store")
            for table in leftovers:
                db.execute(f'DROP TABLE "{table}"')
            db.commit()
    except sqlite3.Error as e:
        raise _refuse(uri, f"{path} is not a usable SQLite database ({e})") from None
    # MLflow's own upgrade, through its public command (a half-migrated store is rare: a process is cheap here)
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True)
    if done.returncode:
        why = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no reason given")
        raise _refuse(uri, f"{path} was left half-migrated and MLflow could not finish it "
                           f"({why[:200]}); back it up, then run `mlflow db upgrade {uri}`")


def _probe_server(uri: str) -> None:
    """One authenticated request (/health needs no login): no server, or refused credentials, is one line.

    Credentials come only from MLflow's own variables ($MLFLOW_TRACKING_USERNAME/PASSWORD or
    $MLFLOW_TRACKING_TOKEN); a refusal names the user, never the password.
    """
    import requests

    auth, headers, user = None, {}, os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user is not None:
        auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    verify = (os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
              and (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True))
    try:  # any signed-in user may search experiments; MLflow reads the same variables for every call
        answer = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                              auth=auth, headers=headers, verify=verify, timeout=(CONNECT_SECONDS, ANSWER_SECONDS))
    except requests.RequestException as e:
        raise _refuse(uri, f"no MLflow server answers ({type(e).__name__})") from None
    if answer.status_code in (401, 403):
        who = (f"user {user!r} (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)" if user is not None else
               "the token in MLFLOW_TRACKING_TOKEN" if headers else
               "no credentials (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")
        why = "wrong username or password" if answer.status_code == 401 else "no permission"
        raise _refuse(uri, f"the server refused {who}: HTTP {answer.status_code}, {why}")
    if answer.status_code >= 500:
        raise _refuse(uri, f"the server answers HTTP {answer.status_code} (its database may be down)")


def _probe_database(uri: str) -> None:
    """One connection attempt with a timeout (MLflow's own engine retries for ~2 minutes)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": CONNECT_SECONDS})
    except Exception as e:  # an unknown scheme or a missing driver
        raise _refuse(uri, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        cause = getattr(e, "orig", None) or e
        raise _refuse(uri, f"the database does not answer ({type(cause).__name__}: "
                           f"{redact_uri(str(cause).splitlines()[0][:200]) if str(cause) else ''})") from None
    finally:
        engine.dispose()


# MLflow's HTTP client retries a dead server for ~255 s by default: bounded while a run starts
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# Mid-run (the helper process, after the run exists): each MLflow call retries briefly, and
# cnnlab.record.recorder tries it again every few seconds for up to $CNNLAB_OUTAGE_SECONDS
# (a restarted server is caught within seconds, not at MLflow's next exponential backoff step);
# past that the run's calls go to a local spool (cnnlab.spool). User-set values win.
MIDRUN_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
OUTAGE_ENV = "CNNLAB_OUTAGE_SECONDS"
OUTAGE_SECONDS = 300


@contextlib.contextmanager
def quick_http():
    """Bounded HTTP retries inside the block (user-set values win); MLflow's generous defaults after it."""
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    os.environ.update({k: v for k, v in QUICK_HTTP.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
