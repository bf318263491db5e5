"""cnnlab's command line: `python run.py [overrides]`, `python run.py -m [sweep overrides]`.

All logic lives in `cnnlab`; this file only hands Hydra's composed config to it.
"""

import hydra
from omegaconf import DictConfig

from cnnlab.cli import guard_hydra_errors, run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    return run_job(cfg)


if __name__ == "__main__":
    guard_hydra_errors(main)
