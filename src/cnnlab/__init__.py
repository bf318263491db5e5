"""cnnlab: config-driven CNN experiments on Keras, tracked in MLflow."""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"


def sweep_jobs() -> int:
    """Default parallel sweep jobs: one per core, at most 4 (each job uses several threads or shares a GPU)."""
    return max(1, min(4, os.cpu_count() or 1))


def helper_env() -> dict:
    """The environment for a `python -m cnnlab.<helper>` process: cnnlab importable even when not installed."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


OmegaConf.register_new_resolver("cnnlab.sweep_jobs", sweep_jobs, replace=True)
