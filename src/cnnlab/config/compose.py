"""The configs on disk and a composed config as plain Python: `CONF_DIR`, `to_plain`."""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def to_plain(cfg) -> dict:
    """Resolve interpolations into a plain dict; a broken `${...}` or `???` names its key."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(key or "config", msg) from None
