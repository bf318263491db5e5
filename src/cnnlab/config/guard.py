"""Config trust: a config file cannot make Hydra run code, and secrets never reach a log.

Hydra instantiates `_target_`s in `hydra.callbacks`, `hydra.launcher` and `hydra.sweeper`,
and hands `hydra.hydra_logging` / `hydra.job_logging` to `logging.config.dictConfig`
(whose `()` and `class` keys call code), before the task function sees the config. A model
file with `# @package _global_` can write into all of them. `install()` therefore checks
every config Hydra composes, before Hydra acts on it (`check_composed`):

- `_target_` outside those three subtrees: refused (nothing of cnnlab's instantiates);
- inside them: only modules under `TRUSTED_TARGETS`;
- logging factories: only classes of `logging` and `logging.handlers`, streams `ext://sys.*`;
- `hydra.sweeper.custom_search_space` (the Optuna sweeper calls it): trusted modules only;
- `hydra.job.env_set` may not set the loader's or Python's variables (`LD_*`, `PYTHON*`).

Secrets: values read with `${oc.env:...}` and credentials inside URIs. `redacted_config`
gives the resolved config with them replaced by `***` (what a run logs as params and
config.yaml); `redact_overrides` and `redact_text` do the same for override lists and
messages.

Example:
    >>> redact_uri("http://user:pass@host:5000")
    'http://***@host:5000'
    >>> redact_overrides(["tracking.uri=postgresql://u:p@h/db", "init=he"])
    ['tracking.uri=postgresql://***@h/db', 'init=he']
"""

from __future__ import annotations

import os
import re

from hydra.experimental.callback import Callback

from cnnlab.config.redact import REDACTED, redact_uri  # noqa: F401 (redact_uri: part of this module's API)
from cnnlab.errors import ConfigError

# modules whose classes Hydra may instantiate: Hydra's own plugins and callbacks, installed
# Hydra plugins (joblib launcher, Optuna sweeper), cnnlab's callbacks, Optuna's samplers
TRUSTED_TARGETS = ("hydra._internal.core_plugins.", "hydra.experimental.callbacks.", "hydra_plugins.",
                   "cnnlab.", "optuna.samplers.")
INSTANTIATED = ("hydra.callbacks.", "hydra.launcher.", "hydra.sweeper.")
LOGGING = ("hydra.hydra_logging.", "hydra.job_logging.")
LOGGING_MODULES = ("logging", "logging.handlers")
LOGGING_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
UNSAFE_ENV = re.compile(r"^(LD_|DYLD_|PYTHON)|^BASH_ENV$|^ENV$")

_OC_ENV = re.compile(r"\$\{oc\.env:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")
_secrets: set[str] = set()  # values read from the environment by the configs composed in this process
MIN_SECRET = 4  # shorter values ('1', 'true') would blank out unrelated text


def check_composed(cfg) -> None:
    """Refuse a composed config (with its `hydra` node) that would make Hydra run untrusted code.

    Raises ConfigError naming the key and its value.
    """
    from omegaconf import OmegaConf

    remember_secrets(cfg)
    for path, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        key = path.rsplit(".", 1)[-1]
        if key == "_target_":
            _check_target(path, value)
        elif path.startswith(LOGGING):
            _check_logging(path, key, value)
        elif path == "hydra.sweeper.custom_search_space" and value is not None:
            if not _trusted(value):
                raise ConfigError(path, f"{value!r}: the sweeper would call it; only functions from "
                                        f"{', '.join(TRUSTED_TARGETS)} are allowed")
        elif path.startswith("hydra.job.env_set.") and UNSAFE_ENV.search(key):
            raise ConfigError(path, f"{value!r}: a config may not set {key}, which decides what code runs")


def refuse_targets(plain: dict, prefix: str = "") -> None:
    """A task config (no `hydra` node) names no `_target_` anywhere."""
    for path, value in _leaves(plain, prefix):
        if path.rsplit(".", 1)[-1] == "_target_":
            _check_target(path, value)


def _check_target(path: str, value) -> None:
    if not path.startswith(INSTANTIATED):
        raise ConfigError(path, f"{value!r}: configs may not name code to run (a _target_ is allowed only "
                                f"in hydra.callbacks, hydra.launcher and hydra.sweeper)")
    if not isinstance(value, str) or "${" in value or not _trusted(value):
        raise ConfigError(path, f"{value!r} is not a trusted target: Hydra instantiates only classes written "
                                f"out from {', '.join(TRUSTED_TARGETS)}")


def _check_logging(path: str, key: str, value) -> None:
    if key in ("()", "class") and (not isinstance(value, str) or value.rpartition(".")[0] not in LOGGING_MODULES):
        raise ConfigError(path, f"{value!r}: logging may only use classes of {' or '.join(LOGGING_MODULES)}")
    if isinstance(value, str) and value.startswith("ext://") and value not in LOGGING_STREAMS:
        raise ConfigError(path, f"{value!r}: logging may only refer to {' or '.join(LOGGING_STREAMS)}")


def _trusted(name) -> bool:
    return isinstance(name, str) and name.startswith(TRUSTED_TARGETS)


def _leaves(node, prefix: str = ""):
    """(dotted path, value) of every leaf, and of every `_target_` even when it is not a string."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and key != "_target_":
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def install() -> None:
    """Check every config Hydra composes in this process before Hydra uses it.

    Hydra 1.3 has no hook between composing a config and instantiating its callbacks
    (`Hydra.run`/`multirun` do both at once; composing with logging configures logging first),
    so this wraps `ConfigLoaderImpl.load_configuration`, which every composition goes through:
    single runs, `-m` (and each sweep job's config), `--cfg`, `--help` and `hydra.compose`.

    A private Hydra API, the one cnnlab keeps: no public one runs before Hydra instantiates a
    config's callbacks. Covered by tests/test_cli_safety.py (a config file that names
    `numpy.savetxt` as a callback is refused before anything runs).
    """
    import functools

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = ConfigLoaderImpl.load_configuration
    if getattr(original, "cnnlab_checked", False):
        return

    @functools.wraps(original)
    def load_configuration(self, *args, **kwargs):
        cfg = original(self, *args, **kwargs)
        check_composed(cfg)
        return cfg

    load_configuration.cnnlab_checked = True
    ConfigLoaderImpl.load_configuration = load_configuration


# --- secrets -----------------------------------------------------------------------------------


def redact_text(text: str) -> str:
    """A message or file with URI credentials and the values read by `${oc.env:...}` replaced by `***`."""
    text = redact_uri(str(text))
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_overrides(overrides) -> list[str]:
    """Overrides as recorded (the `hydra.overrides` tag): `${oc.env:NAME}` stays, its value never shows."""
    return [redact_text(o) for o in overrides]


def remember_secrets(cfg) -> set[str]:
    """Note the environment values that `cfg`'s `${oc.env:NAME}` interpolations read; returns them."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    found = set()
    for _, value in _leaves(raw):
        if isinstance(value, str):
            for name in _OC_ENV.findall(value):
                secret = os.environ.get(name)
                if secret and len(secret) >= MIN_SECRET:
                    found.add(secret)
    _secrets.update(found)
    return found


def redacted_config(cfg, plain: dict | None = None) -> dict:
    """A copy of the resolved config to log or print: `***` for every value written with `${oc.env:...}`,
    for an environment value copied elsewhere (`${tracking.experiment}`), and for URI credentials.

    `cfg` is the unresolved config (DictConfig); `plain` its resolved container, if already made.

    Example:
        >>> from omegaconf import OmegaConf
        >>> os.environ["DEMO_TOKEN"] = "s3cr3t-token"
        >>> cfg = OmegaConf.create({"a": "${oc.env:DEMO_TOKEN}", "b": "x-${a}", "uri": "http://u:p@h"})
        >>> redacted_config(cfg)
        {'a': '***', 'b': 'x-***', 'uri': 'http://***@h'}
    """
    from omegaconf import OmegaConf

    is_config = OmegaConf.is_config(cfg)
    if plain is None:
        plain = OmegaConf.to_container(cfg, resolve=True) if is_config else cfg
    raw = OmegaConf.to_container(cfg, resolve=False) if is_config else plain
    if is_config:
        remember_secrets(cfg)
    from_env = {path for path, value in _leaves(raw) if isinstance(value, str) and _OC_ENV.search(value)}
    return _redact(plain, from_env, "")


def _redact(node, from_env: set[str], prefix: str):
    if isinstance(node, dict):
        return {k: _redact(v, from_env, f"{prefix}{k}.") for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, from_env, f"{prefix}{i}.") for i, v in enumerate(node)]
    if prefix[:-1] in from_env:
        return REDACTED
    return redact_text(node) if isinstance(node, str) else node


# --- Hydra's own output files ------------------------------------------------------------------


def redact_file(path) -> None:
    """Rewrite a text file with `redact_text` (atomically: parallel sweep jobs may share it)."""
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return
    clean = redact_text(text)
    if clean != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(clean, encoding="utf-8")
        os.replace(tmp, path)


class RedactHydraFiles(Callback):
    """Hydra callback (conf/config.yaml): the files Hydra writes for a job (`.hydra/overrides.yaml`,
    `hydra.yaml`, `config.yaml`) and a sweep (`multirun.yaml`) keep no URI credentials or `oc.env` values.

    Hydra writes a job's files just before `on_job_start`, a sweep's when it starts launching jobs.
    """

    FILES = ("overrides.yaml", "hydra.yaml", "config.yaml")

    def on_job_start(self, config, **kwargs) -> None:
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.output_subdir is not None:
            for name in self.FILES:
                redact_file(Path(hc.runtime.output_dir) / hc.output_subdir / name)
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            redact_file(Path(hc.sweep.dir) / "multirun.yaml")

    def on_multirun_end(self, config, **kwargs) -> None:
        from pathlib import Path

        redact_file(Path(config.hydra.sweep.dir) / "multirun.yaml")
