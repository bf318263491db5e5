"""What `run.py` does with a composed config, and how errors reach the user.

A bad config, a bad override or a missing data file ends in one line on
stderr naming the key and the value, and exit code 2; no traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from cnnlab.errors import ConfigError

EXIT_CONFIG = 2  # bad config, bad override, missing or corrupt data
EXIT_DIVERGED = 3  # the run was recorded, as FAILED: its loss became NaN/inf


def fail(message: str, code: int = EXIT_CONFIG):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def guard_hydra_errors(hydra_main) -> None:
    """Run a `@hydra.main` function; Hydra's own override/composition errors become one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra prints composition errors over several lines and exits 1; let them reach us instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e).split("Config search path")[0]  # Hydra appends its search path to lookups
        cause = e.__cause__
        detail = f" ({str(cause).splitlines()[0]})" if isinstance(cause, OmegaConfBaseException) else ""
        fail(one_line(message) + detail)


def hydra_context() -> tuple[list[str], dict]:
    """The job's command-line overrides and group choices, when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], {}
    hc = HydraConfig.get()
    return list(hc.overrides.task), {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}


def run_job(cfg):
    """The body of one Hydra job: validate, then dry-run or train. Returns the test accuracy."""
    from cnnlab.schema import check_config

    try:
        run = check_config(cfg)
        if run.dry_run:
            return dry_run(cfg, run)
        from cnnlab.fit import Diverged
        from cnnlab.train import train

        overrides, choices = hydra_context()
        signal.signal(signal.SIGTERM, _interrupt)  # a killed job ends its MLflow run as KILLED
        try:
            return train(run, overrides, choices)["test_accuracy"]
        except Diverged as e:
            fail(str(e), EXIT_DIVERGED)
    except ConfigError as e:
        fail(str(e))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def dry_run(cfg, run) -> None:
    """Print the resolved config and the shape table, build the Keras model, check that it agrees."""
    from omegaconf import OmegaConf

    from cnnlab.builder import build_model, shape_table, verify_model

    print(OmegaConf.to_yaml(cfg, resolve=True))
    print(shape_table(run.arch))
    from cnnlab.backend import keras

    model = build_model(run.arch, run.trainer["seed"])
    verify_model(run.arch, model)
    print(f"Keras {keras.__version__} ({keras.backend.backend()}) built the same model: "
          f"{model.count_params():,} parameters, output {tuple(model.output.shape)}")
