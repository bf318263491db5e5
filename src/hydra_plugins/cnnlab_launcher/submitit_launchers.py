"""`hydra/launcher=submitit_local|submitit_slurm` (conf/hydra/launcher/): Hydra's submitit launchers,
a lost job failing alone.

Needs the `cluster` extra (hydra-submitit-launcher). The jobs run the submitit plugin's own
job function (`__call__`, inherited); only the gathering of results is cnnlab's
(`cnnlab.sweep.cluster_launch.launch_submitit`).
"""

from typing import Any, Sequence

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # the cluster extra is not installed: say so when such a sweep is asked for
    from cnnlab.errors import ConfigError

    class _Missing:
        def __init__(self, **_: Any) -> None:
            raise ConfigError("hydra/launcher", "the submitit launchers need cnnlab's cluster extra: "
                                                "pip install -e '.[cluster]'")

    LocalLauncher = SlurmLauncher = _Missing  # type: ignore


class CnnlabLocalLauncher(LocalLauncher):
    """`hydra/launcher=submitit_local`: each job a local process started by submitit."""

    kind = "local"  # submitit's executor name

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from cnnlab.sweep.cluster_launch import launch_submitit

        return launch_submitit(self, job_overrides, initial_job_idx)


class CnnlabSlurmLauncher(SlurmLauncher):
    """`hydra/launcher=submitit_slurm`: the jobs as one SLURM job array (sbatch)."""

    kind = "slurm"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from cnnlab.sweep.cluster_launch import launch_submitit

        return launch_submitit(self, job_overrides, initial_job_idx)
