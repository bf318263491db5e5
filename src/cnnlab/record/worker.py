"""The MLflow helper process: a run's tracking calls, in order, off the training process.

Importing MLflow, opening its store, logging and rendering plots is seconds of
pure Python. On a thread of the training process it held the GIL against
TensorFlow's import (a 100-step run: 1.14x a hand-written script's wall time);
in its own process it runs on the other core (1.02x; benchmarks/RESULTS.md).
The helper sits in its own session, so Ctrl-C reaches only the training
process, which then ends the run as KILLED; if the training process dies
without ending the run, the helper ends it as KILLED itself.

The channel carries length-prefixed pickles both ways. The training process
sends calls; the helper answers `flush` requests (and `end`, last), and reports
the first failed call at once (an `error` message), so
`cnnlab.record.recorder.Recorder.check` can stop training at the next step. A thread
drains the incoming pipe into a queue, so a call waiting out a server outage
never blocks training; a call is tried again every 2 s while the server is
unreachable, and one that outlasts $CNNLAB_OUTAGE_SECONDS sends the rest of
the run to a local spool (`cnnlab.spool`) instead of failing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time

HEADER = struct.Struct("!Q")
RETRY_SECONDS = 2  # between tries of a call whose server is unreachable


def send(stream, message) -> None:
    data = pickle.dumps(message)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def receive_fd(fd: int):
    """One message from a raw file descriptor (select-friendly: no read-ahead buffer). EOFError at the end."""
    size = HEADER.unpack(_read_exactly(fd, HEADER.size))[0]
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def patiently(fn, args, seconds: float, unreachable) -> None:
    """`fn(*args)`, tried again every RETRY_SECONDS while the server is unreachable, for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn(*args)
        except Exception as e:
            if not unreachable(e) or time.monotonic() + RETRY_SECONDS > deadline:
                raise
            time.sleep(RETRY_SECONDS)


def read_all(inbox_fd: int, inbox: queue.SimpleQueue) -> None:
    """Move every message from the training process into `inbox` at once (a thread).

    While a call waits out a server outage (`patiently`, for minutes), the pipe
    keeps draining, so the training process never blocks on a full pipe.
    """
    while True:
        try:
            inbox.put(receive_fd(inbox_fd))
        except EOFError:
            inbox.put(("end", "KILLED"))  # the training process is gone without ending its run
            return
        except Exception:  # an unreadable message: the stream cannot be trusted past it
            inbox.put(("end", "FAILED"))
            return


def serve(inbox_fd: int, outbox) -> None:
    """The helper's loop: run each message in order until `end` or until the training process is gone.

    A call that fails because the server stays unreachable for $CNNLAB_OUTAGE_SECONDS switches the
    helper to spooling (`cnnlab.spool`): that call and all later ones go to a local folder,
    and training goes on; every flush reply names the folder.
    """
    from cnnlab.record.store import MIDRUN_HTTP, OUTAGE_ENV, OUTAGE_SECONDS
    from cnnlab.record.tracking import Tracker
    from cnnlab.spool import Spool, spool_root, unreachable

    tracker, error, spool = None, None, None
    midrun = {k: v for k, v in MIDRUN_HTTP.items() if k not in os.environ}  # the user's own settings win
    outage_seconds = float(os.environ.get(OUTAGE_ENV, OUTAGE_SECONDS))
    inbox = queue.SimpleQueue()
    threading.Thread(target=read_all, args=(inbox_fd, inbox), daemon=True).start()
    started = time.perf_counter()
    try:  # warm up while the training process loads data and TensorFlow
        import mlflow.entities  # noqa: F401
        import mlflow.tracking  # noqa: F401

        from cnnlab.record.plots import figure

        figure()  # matplotlib's import, without pyplot: the run's plots need only Figure and Agg
        # a failed call reaches the user as one line from the training process, not as MLflow's traceback
        logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    except Exception as e:
        error = describe(e)
    warm_up = time.perf_counter() - started  # MLflow's import: part of what tracking costs
    while True:
        kind, *args = inbox.get()
        if kind == "flush":
            send(outbox, ("flushed", error, tracker and tracker.run_id,
                          warm_up + (tracker.seconds if tracker else 0.0), spool and str(spool.folder)))
        elif kind == "end":
            status = "FAILED" if error and args[0] == "FINISHED" else args[0]
            if tracker and not spool:
                try:
                    if error:
                        patiently(tracker.set_tags, ({"error": error},), outage_seconds, unreachable)
                    patiently(tracker.end, (status,), outage_seconds, unreachable)
                except Exception as e:
                    if unreachable(e):  # the server went away at the very end: keep the end for later
                        with contextlib.suppress(Exception):
                            spool = Spool.create(spool_root(), tracker.client.tracking_uri, tracker.run_id,
                                                 describe(e))
            if spool:
                spool.end(status, error)
            with contextlib.suppress(OSError, ValueError):  # the last word: was anything spooled?
                send(outbox, ("flushed", error, tracker and tracker.run_id, 0.0, spool and str(spool.folder)))
            return
        elif error or (kind == "call" and tracker is None):
            continue  # the record is already broken (or never began): the training process stops on it
        elif spool and kind == "call":
            spool.call(*args)
        else:
            try:
                if kind == "start":
                    if args[4]:  # resume: reopen an existing run instead
                        tracker = Tracker.resume(args[0], args[1], **args[4])
                    else:
                        tracker = Tracker.start(*args[:3], parent_run_id=args[3])
                    os.environ.update(midrun)  # the run exists: from now on, outlast outages
                elif kind == "call":
                    method, call_args = args
                    patiently(getattr(tracker, method), call_args, outage_seconds, unreachable)
                else:
                    fn, call_args, call_kwargs = args
                    fn(*call_args, **call_kwargs)
            except Exception as e:
                if kind == "call" and unreachable(e):  # the run exists; its server is gone for minutes
                    try:
                        spool = Spool.create(spool_root(), tracker.client.tracking_uri, tracker.run_id, describe(e))
                        spool.call(*args)
                        continue
                    except Exception as spool_error:
                        e = spool_error  # cannot even keep it locally: fail the run as before
                error = describe(e)
                send(outbox, ("error", error))  # at once: training stops at its next step


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries must not corrupt replies
    serve(sys.stdin.fileno(), channel)
    channel.close()
    os._exit(0)  # the store has committed; skip tearing down MLflow and matplotlib


if __name__ == "__main__":
    main()
