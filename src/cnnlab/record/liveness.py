"""Runs whose process died: how a run says which process owns it, and who ends it when that process is gone.

A run is one process, which ends its own run (`cnnlab.record.recorder.Recorder.end`). A process killed
outright (SIGKILL, the OOM killer) cannot, so every run carries the tags `host`, `process.pid` and
`process.started` (the process's start time, so a reused PID is not mistaken for it) from the moment it
is created. A RUNNING run whose process on this host no longer exists is ended KILLED, with the cause
in its `error` tag (`cnnlab.record.tracking.end_dead_runs`), by the next cnnlab command that opens the
store: a new run or sweep (`Tracker.start`), `python -m cnnlab.report`, and a sweep's end for its children.
Runs of other hosts are left alone (their processes cannot be seen from here): a cluster sweep's
launcher ends its lost jobs itself (`cnnlab.sweep.lost`).

Example:
    >>> tags = process_tags()
    >>> owner_alive(tags)
    True
    >>> owner_alive({**tags, "process.started": "1"})   # the same PID, another process
    False
"""

from __future__ import annotations

import os
import socket

HOST, PID, STARTED = "host", "process.pid", "process.started"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it does not exist (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields[19].decode()


def process_tags() -> dict[str, str]:
    """The tags naming this process as the owner of a run (set when the run is created)."""
    tags = {HOST: socket.gethostname(), PID: str(os.getpid())}
    started = _start_ticks(os.getpid())
    if started:
        tags[STARTED] = started
    return tags


def owner_alive(tags: dict) -> bool:
    """Whether the process a run's tags name still runs; True when it cannot be told (another host, no tags)."""
    if tags.get(HOST) != socket.gethostname() or not str(tags.get(PID, "")).isdigit():
        return True
    pid = int(tags[PID])
    if not os.path.isdir("/proc"):  # not Linux: a signal-0 probe, blind to reused PIDs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    started = _start_ticks(pid)
    return started is not None and started == tags.get(STARTED, started)
