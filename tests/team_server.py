"""A team's MLflow tracking server, throwaway and local: PostgreSQL + `mlflow server` with login.

`python tests/team_server.py` starts, in a new folder, a PostgreSQL cluster (as the
`postgres` user when run as root: PostgreSQL refuses root) and an `mlflow server`
on it with `--app-name basic-auth` (login) and `--artifacts-destination` (the server
stores artifacts itself, so clients need no storage credentials); both on 127.0.0.1
only, on free ports. It prints the URI and a file of `export` lines with an admin
login (the password is never printed), serves until Ctrl-C, then stops both by PID.
The same classes start the server for `tests/test_server.py` and
`benchmarks/server.py`: one implementation.

Example:
    $ python tests/team_server.py                      # Ctrl-C stops it
    MLflow server: http://127.0.0.1:41235 ...
    $ . /tmp/cnnlab-server-x/env.sh && python run.py tracking=server model=tiny

    >>> with TeamServer.start() as server:        # doctest: +SKIP
    ...     os.environ.update(server.client_env())
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_SECONDS = 120  # `mlflow server` answers after ~10-30 s on 2 cores
STOP_SECONDS = 20
ADMIN = "admin"


def pg_bindir() -> Path | None:
    """The folder holding PostgreSQL's `initdb` and `pg_ctl`, or None if it is not installed."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(out.stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)  # Debian: not on PATH
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


class Postgres:
    """A PostgreSQL cluster in `folder`, listening on 127.0.0.1:`port` only; database `mlflow`, user `mlflow`.

    Trust authentication is safe here only because it listens on loopback alone (and its
    Unix socket sits in its own 0700 folder); a team server uses a password (see README).
    """

    def __init__(self, folder: Path, port: int, bindir: Path):
        self.folder, self.port, self.bindir = folder, port, bindir
        self.log = folder.parent / "postgres.log"

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    @classmethod
    def start(cls, folder: Path, port: int | None = None, durable: bool = True) -> "Postgres":
        """initdb, start, createdb. `durable=False` (tests): no fsync, for a cluster deleted afterwards."""
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl; Debian: apt-get install postgresql)")
        folder.mkdir(mode=0o700)
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(folder, "postgres", "postgres")
        pg = cls(folder, port or free_port(), bindir)
        pg._as_owner("initdb", "-D", str(folder), "-U", "mlflow", "--auth=trust", "-E", "UTF8",
                     *([] if durable else ["--no-sync"]))
        options = f"-p {pg.port} -k {folder} -c listen_addresses=127.0.0.1"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        pg.log.touch()
        if os.geteuid() == 0:
            shutil.chown(pg.log, "postgres", "postgres")
        try:
            pg._as_owner("pg_ctl", "-D", str(folder), "-o", options, "-l", str(pg.log), "-w", "-t", "60", "start")
            pg._as_owner("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "mlflow", "mlflow")
        except BaseException:
            pg.stop(immediate=True)  # started, then failed: not left running
            raise
        return pg

    def _as_owner(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        if out.returncode:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")

    @property
    def pid(self) -> int | None:
        """The postmaster's PID (first line of postmaster.pid), None if not running."""
        try:
            return int((self.folder / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown by PID (SIGINT, as `pg_ctl stop -m fast` sends), SIGKILL if it lingers.

        `immediate` (SIGQUIT, `-m immediate`): no shutdown checkpoint, for a cluster about to be deleted.
        """
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
            if not _wait_gone(pid, STOP_SECONDS):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)


class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port` with basic-auth and the artifact proxy, in its own process group."""

    def __init__(self, folder: Path, backend_uri: str, port: int, admin_password: str, workers: int = 2):
        self.folder, self.backend_uri, self.port = folder, backend_uri, port
        self.admin_password, self.workers = admin_password, workers
        self.proc: subprocess.Popen | None = None
        self.log = folder / "mlflow-server.log"
        self.auth_ini = folder / "basic_auth.ini"
        # the auth app keeps its users in its own database: here, not in the current folder
        self.auth_ini.write_text(
            "[mlflow]\n"
            "default_permission = EDIT\n"  # a team logs to shared experiments; admins can narrow it per user
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # checking a password costs ~1 s of CPU (a deliberately slow hash): once a minute per user
            # and worker, not on every logging call (a changed password is refused within 60 s)
            "auth_cache_ttl_seconds = 60\n")
        self.secret_key = secrets.token_hex(16)  # Flask's session key; one per server folder

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "MlflowServer":
        """Start (again, on the same port and stores); wait until /health answers."""
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_ini),
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
               # GenAI job runner (huey): not needed for tracking, and another process to start
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        artifacts = self.folder / "artifacts"
        artifacts.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers), "--app-name", "basic-auth"]
        with open(self.log, "ab") as log:
            # own process group: stopped as one (the CLI's uvicorn and its workers), and Ctrl-C is ours to pass on
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, seconds: float = READY_SECONDS) -> float:
        """Seconds until /health answered 200; RuntimeError (with the log's tail) if it died or never did."""
        import requests

        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.uri + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server did not answer within {seconds:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to its process group (the group's id is the PID we started), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(pid, signal.SIGKILL)  # workers still in the group: gone with it
        self.proc.wait(timeout=10)


class TeamServer:
    """PostgreSQL + MLflow server in one folder (`folder`), torn down together by `stop`.

    `client_env()` is what a run needs: MLFLOW_TRACKING_URI/USERNAME/PASSWORD for the admin.
    """

    def __init__(self, folder: Path, postgres: Postgres, mlflow: MlflowServer, owned: bool):
        self.folder, self.postgres, self.mlflow, self.owned = folder, postgres, mlflow, owned

    @classmethod
    def start(cls, folder: Path | None = None, port: int | None = None, workers: int = 2,
              durable: bool = True) -> "TeamServer":
        """Both servers in `folder` (None: a new temporary one, deleted by `stop`); `durable=False`: see Postgres."""
        owned = folder is None
        folder = Path(tempfile.mkdtemp(prefix="cnnlab-server-")) if owned else Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)  # the postgres user must reach its data folder inside; nothing else is readable
        postgres = mlflow = None
        try:
            postgres = Postgres.start(folder / "pgdata", durable=durable)
            mlflow = MlflowServer(folder, postgres.uri, port or free_port(), secrets.token_urlsafe(18), workers)
            server = cls(folder, postgres, mlflow, owned)
            server.write_env_file()
            mlflow.start()
            return server
        except BaseException:
            if mlflow:
                mlflow.stop()
            if postgres:
                postgres.stop()
            raise

    @property
    def uri(self) -> str:
        return self.mlflow.uri

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": ADMIN,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow.admin_password}

    @property
    def env_file(self) -> Path:
        return self.folder / "env.sh"

    def write_env_file(self) -> None:
        """`env.sh` (mode 600): the exports for a shell, so the password is never printed."""
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"export {k}={v}\n" for k, v in self.client_env().items())

    def stop(self) -> None:
        self.mlflow.stop()
        self.postgres.stop(immediate=self.owned)  # a cluster about to be deleted needs no checkpoint
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "TeamServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/team_server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="keep the server's files here (a new or empty folder the "
                                                 "postgres user can reach; default: a new temporary folder, "
                                                 "deleted at exit)")
    parser.add_argument("--port", type=int, help="the MLflow server's port (default: a free one)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    args = parser.parse_args(argv)
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        print(f"error: --dir: {args.dir} is not empty (each server starts in a new folder)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID`: stop cleanly too
    started = time.monotonic()
    try:
        server = TeamServer.start(args.dir, args.port, args.workers)
    except (RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"MLflow server: {server.uri} (PostgreSQL on 127.0.0.1:{server.postgres.port}, basic-auth, "
          f"artifacts in {server.mlflow.folder / 'artifacts'}; up in {time.monotonic() - started:.0f} s)\n"
          f"  admin login for runs and the UI:  . {server.env_file}\n"
          f"  then:  python run.py tracking=server model=tiny\n"
          f"  logs:  {server.mlflow.log}, {server.postgres.log}\n"
          f"Ctrl-C stops it" + (" and deletes the folder." if server.owned else "."), flush=True)
    try:
        while server.mlflow.proc.poll() is None:
            time.sleep(1)
        print(f"error: mlflow server exited {server.mlflow.proc.returncode}: {server.mlflow.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping...", flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
