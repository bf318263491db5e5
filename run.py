"""cnnlab's command line: `python run.py [overrides]`, `python run.py -m [sweep overrides]`.

All logic lives in `cnnlab`; this file only hands Hydra's composed config to it.
"""

import signal
import sys


def _interrupted_while_starting(signum, frame):  # until guard_hydra_errors puts cnnlab's handler in place
    sys.stderr.write(f"error: interrupted ({signal.Signals(signum).name}) while starting\n")
    sys.exit(128 + signum)


if __name__ == "__main__":  # first of all: Ctrl-C or SIGTERM at any moment ends in one line
    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN:
            signal.signal(_sig, _interrupted_while_starting)
    if not {"-m", "--multirun"} & set(sys.argv):  # a run: no collections while importing (backend.freeze_imports)
        import gc

        gc.disable()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from cnnlab.cli import guard_hydra_errors  # noqa: E402
from cnnlab.run.job import run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    return run_job(cfg)


if __name__ == "__main__":
    guard_hydra_errors(main)
