"""Hydra plugin shell for cnnlab's launcher (Hydra instantiates launchers only from `hydra_plugins.*`).

The work is in `cnnlab.sweep.launcher`, imported when a sweep launches; see conf/hydra/launcher/cnnlab.yaml.
"""

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CnnlabLauncher(Launcher):
    """`hydra/launcher=cnnlab`: `n_jobs` persistent worker processes that survive each other's death."""

    def __init__(self, n_jobs: int = 1, stop_seconds: float = 10.0, **_: Any) -> None:
        self.n_jobs, self.stop_seconds = int(n_jobs), float(stop_seconds)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.pool = None  # cnnlab.sweep.launcher.Pool, kept across launches (an Optuna sweep launches batches)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from cnnlab.sweep.launcher import launch

        return launch(self, job_overrides, initial_job_idx)

    def launch_stream(self, next_job, on_result) -> None:
        """Jobs asked one at a time as workers free up (`hydra/sweeper=cnnlab_optuna`; `cnnlab.sweep.launcher`)."""
        from cnnlab.sweep.launcher import launch_stream

        launch_stream(self, next_job, on_result)
