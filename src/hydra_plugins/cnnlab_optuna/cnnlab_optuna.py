"""Hydra plugin shell for cnnlab's Optuna sweeper (Hydra instantiates sweepers only from `hydra_plugins.*`).

The work is in `cnnlab.sweep.study`, imported when the sweep starts; see conf/hydra/sweeper/cnnlab_optuna.yaml.
"""

from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CnnlabOptunaSweeper(Sweeper):
    """`hydra/sweeper=cnnlab_optuna`: an Optuna (>= 4) study, asked and told here, persisted in an RDB storage."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # checked when the sweep starts (cnnlab.sweep.study.check_sweeper)
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from cnnlab.sweep.study import run_study

        return run_study(self, list(arguments))
