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


def quiet_mlflow_console() -> None:
    """MLflow's "🏃 View run … / 🧪 View experiment …" lines (runs on a tracking server) only with CNNLAB_VERBOSE=1.

    MLflow's own switch, `MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`, set for this process and those it starts
    (the run's MLflow helper, sweep workers); a value the user set wins.
    """
    if os.environ.get("CNNLAB_VERBOSE", "0") in ("", "0"):
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


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
    """'interrupted (SIGINT): ...', naming the run that was ended KILLED and the command that continues it."""
    name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
    run_id = getattr(e, "run_id", None)
    if not run_id:
        return f"interrupted ({name}); no MLflow run was started"
    step = getattr(e, "resumable_at", None)
    if step is None:
        return f"interrupted ({name}); MLflow run {run_id} is KILLED (no checkpoint yet: nothing to resume from)"
    import shlex

    again = [a for a in sys.argv[1:] if not a.startswith("resume=")]
    command = " ".join(["python", "run.py", *map(shlex.quote, again), f"resume={run_id}"])
    return f"interrupted ({name}); MLflow run {run_id} is KILLED at step {step}; continue it with: {command}"


def _exit_at_once(signum, frame):
    """A signal while the process is already on its way out: no cleanup left worth a traceback."""
    os.write(2, f"error: interrupted ({signal.Signals(signum).name}) again while stopping\n".encode())
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
    quiet_mlflow_console()
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
    quiet_mlflow_console()
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
    from hydra.errors import ConfigCompositionException, OverrideParseException

    if isinstance(e, OverrideParseException):
        fail(override_syntax_message(e.override, str(e.message)))
    if isinstance(e, ConfigCompositionException) and APPEND_ADVICE in str(e):
        message = unknown_key_message(e)
        if message:
            fail(message)
    if isinstance(e, hydra_errors):
        message = str(e).split("Config search path")[0]  # Hydra appends its search path to lookups
        cause = e.__cause__
        detail = f" ({str(cause).splitlines()[0]})" if isinstance(cause, hydra_errors[1]) else ""
        fail(one_line(message) + detail)
    raise e


GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic"
APPEND_ADVICE = "To append to your config use +"  # Hydra's words for an override of a key the config lacks


def unknown_key_message(e: BaseException) -> str | None:
    """Hydra's "Could not override 'a.b'. To append to your config use +a.b=1" as cnnlab's line.

    'trainer.step: unknown key; did you mean 'steps'? (override 'trainer.step=100')': the suggestion
    comes from the keys the composed config really has there (Hydra's `+` advice would only move the
    error on to the schema). A layer argument that the file does not set but the layer kind takes is
    the one case where adding it is the answer.
    """
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    typed = str(e).split(APPEND_ADVICE, 1)[1].strip()
    cause = e.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not cause.full_key:
        return None
    key, parent = str(cause.key), cause.parent_node
    keys = [str(k) for k in parent.keys()] if hasattr(parent, "keys") else []
    added = _layer_argument(cause.full_key, key, parent)
    if added:
        return f"{cause.full_key}: not set in the model's file; add it with '+{typed}'"
    from cnnlab.config.fields import closest

    hint = closest(key, keys) if keys else ""
    known = "" if hint or not keys else f" (known: {', '.join(keys)})"
    return f"{cause.full_key}: unknown key{hint}{known} (override {typed!r})"


def _layer_argument(full_key: str, key: str, parent) -> bool:
    """Whether `full_key` is model.layers.<name>.<key> and the layer's kind takes `key`."""
    parts = full_key.split(".")
    if len(parts) != 4 or parts[:2] != ["model", "layers"] or not hasattr(parent, "get"):
        return False
    try:
        from cnnlab.model.layers import layer_kind

        return key in layer_kind(str(parent.get("type")), ".".join(parts[:3])).args
    except Exception:  # an unknown type: the schema names it once the config composes
        return False


_PARSER_WORDS = [  # ANTLR's words → a user's (the token lists after "expecting" are left out)
    (r"^missing EQUAL at '<EOF>'", "no '=': an override is key=value"),
    (r"^mismatched input '<EOF>'.*", "the value ends too early"),
    (r"^(?:extraneous|mismatched) input '(.*?)' expecting.*", r"unexpected '\1'"),
    (r"^no viable alternative at input '(.*?)'$", r"cannot read the value at '\1'"),
]


def override_syntax_message(override: str, message: str) -> str:
    """Hydra's override-grammar error as one line: the key, what is wrong, a fix that parses, the override.

    >>> override_syntax_message("trainer.steps==100", "Error parsing override 'trainer.steps==100'\\n"
    ...                         "extraneous input '=' expecting {<EOF>, ':', BRACKET_OPEN}")
    "trainer.steps: unexpected '='; did you mean 'trainer.steps=100'? (override 'trainer.steps==100')"
    """
    import re

    lines = [line for line in message.splitlines()
             if line.strip() and not line.startswith(("Error parsing override", "See https://hydra.cc"))]
    detail = lines[0].strip() if lines else "cannot be parsed"
    if detail.startswith("LexerNoViableAltException"):  # the next line's caret marks the character
        caret = lines[1].index("^") - (len(lines[0]) - len(override)) if len(lines) > 1 and "^" in lines[1] else -1
        detail = (f"unexpected character {override[caret]!r} at column {caret + 1}" if 0 <= caret < len(override)
                  else "unexpected character")
    else:
        for pattern, words in _PARSER_WORDS:
            if re.match(pattern, detail):
                detail = re.sub(pattern, words, detail)
                break
    key = override.split("=", 1)[0].lstrip("+~") if "=" in override else override
    fix = _parsable_fix(override)
    hint = f"; did you mean {fix!r}?" if fix else ""
    where = "" if fix else f"; grammar: {GRAMMAR}"
    return f"{key or override}: {detail}{hint} (override {override!r}{where})"


def _parsable_fix(override: str) -> str | None:
    """A near form of `override` that Hydra's grammar accepts (one '=' for '==', no trailing comma)."""
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [re.sub(r"==+", "=", override, count=1), override.rstrip(","), override.replace(" ", "")]
    parser = OverridesParser.create()
    for candidate in dict.fromkeys(c for c in candidates if c != override and "=" in c):
        try:
            parser.parse_overrides([candidate])
            return candidate
        except Exception:  # noqa: BLE001 - any parse failure: not a fix
            continue
    return None


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
