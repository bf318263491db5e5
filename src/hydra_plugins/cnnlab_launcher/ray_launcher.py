"""`hydra/launcher=ray` (conf/hydra/launcher/ray.yaml): Hydra's Ray launcher, a lost job failing alone.

Needs the `cluster` extra (hydra-ray-launcher, ray); the work is in `cnnlab.sweep.cluster_launch`.
"""

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CnnlabRayLauncher(Launcher):
    """Jobs as Ray tasks (`ray.init` and `ray.remote` arguments under `ray`), as hydra-ray-launcher runs them."""

    def __init__(self, ray: DictConfig, **_: Any) -> None:
        self.ray_cfg = ray
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from cnnlab.sweep.cluster_launch import launch_ray

        return launch_ray(self, job_overrides, initial_job_idx)
