"""cnnlab: config-driven CNN experiments on Keras, tracked in MLflow."""

import os
import warnings

from omegaconf import OmegaConf

# conf/hydra/launcher/{joblib,ray,submitit_*}.yaml give Hydra's launcher plugins cnnlab's defaults under the
# plugins' own names; Hydra validates them against the plugins' schemas, and warns about that on each compose
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")

__version__ = "0.1.0"


def sweep_jobs() -> int:
    """Default parallel sweep jobs: one per core, at most 4 (each job uses several threads or shares a GPU)."""
    return max(1, min(4, os.cpu_count() or 1))


def ray_object_store(address) -> int | None:
    """`hydra/launcher=ray`'s object store size: hydra-ray-launcher's 75 MB for a Ray started here,
    none for a cluster's address (`ray.init(address=...)` refuses the argument)."""
    return None if address else 78643200


OmegaConf.register_new_resolver("cnnlab.sweep_jobs", sweep_jobs, replace=True)
OmegaConf.register_new_resolver("cnnlab.ray_object_store", ray_object_store, replace=True)
