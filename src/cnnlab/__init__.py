"""cnnlab: config-driven CNN experiments on Keras, tracked in MLflow."""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"


def sweep_jobs() -> int:
    """Default parallel sweep jobs: one per core, at most 4 (each job uses several threads or shares a GPU)."""
    return max(1, min(4, os.cpu_count() or 1))


OmegaConf.register_new_resolver("cnnlab.sweep_jobs", sweep_jobs, replace=True)
