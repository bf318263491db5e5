"""How errors reach the user of `run.py`: one line, an exit code, no traceback.

A bad config, a bad override, a YAML syntax error or a missing data file ends in
one line on stderr naming the key (or file:line:column) and the value, and exit
code 2; no traceback. Ctrl-C or SIGTERM at any moment ends in one line and exit
130 or 143. No message prints a URI's credentials or a value read by `${oc.env:...}`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from cnnlab.errors import ConfigError, Interrupted

EXIT_CONFIG = 2  # bad config, bad override, missing or corrupt data
EXIT_DIVERGED = 3  # the run was recorded, as FAILED: its loss became NaN/inf
EXIT_TRACKING = 4  # the record broke mid-run (store failed, helper died, checkpoint unwritable): run FAILED


def fail(message: str, code: int = EXIT_CONFIG):
    from cnnlab.config.guard import redact_text
    from cnnlab.run.runlog import say

    say(f"error: {redact_text(message)}", error=True)
    sys.exit(code)


def _interrupt(signum, frame):
    raise Interrupted(signum)


def exit_on_signals() -> None:
    """Ctrl-C and SIGTERM raise `Interrupted` from here on (until then run.py's handler exits at once).

    A SIGINT that the parent set to be ignored (`nohup`, a background job of a script) stays ignored.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def interrupted_message(e: KeyboardInterrupt) -> str:
    name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
    return f"interrupted ({name}); the MLflow run (if any) is marked KILLED"


def _exit_at_once(signum, frame):
    """A signal while the process is already on its way out: no cleanup left worth a traceback."""
    os.write(2, f"error: {interrupted_message(Interrupted(signum))}\n".encode())
    os._exit(128 + signum)


def _print_redacted_traceback(kind, value, tb):
    sys.stderr.write(_redacted_traceback(kind, value, tb))


def _redacted_traceback(kind, value, tb) -> str:
    from cnnlab.config.guard import redact_text

    return redact_text("".join(traceback.format_exception(kind, value, tb)))


class Arguments(argparse.ArgumentParser):
    """argparse for the `python -m cnnlab.<command>` tools: a bad argument is one line, exit 2 (no usage block).

    >>> Arguments(prog="x").error("argument --split: invalid choice: 'x'")
    Traceback (most recent call last):
    ...
    cnnlab.errors.ConfigError: argument --split: invalid choice: 'x' (see x --help)
    """

    def error(self, message):
        raise ConfigError("", f"{message} (see {self.prog} --help)")


def run_command(body, *args) -> None:
    """Run a command's `body(*args)`: a ConfigError is one line and exit 2, Ctrl-C/SIGTERM one line and 130/143."""
    sys.excepthook = _print_redacted_traceback  # a bug's traceback shows no credentials
    exit_on_signals()
    try:
        body(*args)
    except ConfigError as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        _set_handlers(_exit_at_once)
        fail(interrupted_message(e), getattr(e, "exit_code", 130))


def yaml_error(e: BaseException):
    """The YAML syntax error behind a Hydra exception, if that is what it is."""
    import yaml

    found = _cause(e, yaml.MarkedYAMLError)
    return found if found is not None and found.problem_mark is not None else None


def yaml_message(e) -> str:
    """'conf/model/x.yaml:5:7: expected ',' or '}', but got ':' (while parsing a flow mapping at 4:10)'"""
    mark = e.problem_mark
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}"
    context = ""
    if e.context:
        at = e.context_mark
        context = f" ({e.context}" + (f" at {at.line + 1}:{at.column + 1})" if at is not None else ")")
    return f"{where}: {e.problem}{context}"


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def guard_hydra_errors(hydra_main) -> None:
    """Run a `@hydra.main` function; Hydra's own override/composition errors become one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.config import guard as config_guard

    # Hydra prints composition errors over several lines and exits 1; let them reach us instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.excepthook = _print_redacted_traceback  # an unexpected error's traceback shows no credentials
    config_guard.install()  # before Hydra instantiates anything a config names
    exit_on_signals()
    try:
        hydra_main()
    except BaseException as e:
        _set_handlers(_exit_at_once)
        _report(e, (HydraException, OmegaConfBaseException))
    finally:
        _set_handlers(_exit_at_once)  # the way out (atexit, joins) is no place for a second traceback


def _report(e: BaseException, hydra_errors: tuple) -> None:
    """One line and the exit code for what ended the run; anything unexpected is raised again."""
    if isinstance(e, SystemExit):
        raise e
    interrupt = _cause(e, KeyboardInterrupt)  # also when cleanup code failed while handling it
    if interrupt is not None:
        fail(interrupted_message(interrupt), getattr(interrupt, "exit_code", 130))
    if isinstance(e, ConfigError):
        fail(str(e))  # raised by config_guard while Hydra composed the config
    if yaml_error(e) is not None:
        fail(yaml_message(yaml_error(e)))
    if isinstance(e, ValueError) and _raised_by_hydra(e):
        fail(one_line(e))  # command-line misuse, e.g. `-m` together with `--cfg`
    from hydra.errors import OverrideParseException

    if isinstance(e, OverrideParseException):  # Hydra names the override in only some of its messages
        detail = str(e.message).split("\nSee https://hydra.cc")[0]
        detail = detail.replace(f"Error parsing override '{e.override}'", "").replace(e.override, "")
        fail(f"override {e.override!r}: {one_line(detail.replace('^', '')) or 'cannot be parsed'}"
             " (see https://hydra.cc/docs/advanced/override_grammar/basic)")
    if isinstance(e, hydra_errors):
        message = str(e).split("Config search path")[0]  # Hydra appends its search path to lookups
        cause = e.__cause__
        detail = f" ({str(cause).splitlines()[0]})" if isinstance(cause, hydra_errors[1]) else ""
        fail(one_line(message) + detail)
    raise e


def _cause(e: BaseException | None, kind: type):
    """`e` or the first exception of `kind` in its chain (`raise ... from`, or raised while handling)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _set_handlers(handler) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, handler)


def _raised_by_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    return f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename
