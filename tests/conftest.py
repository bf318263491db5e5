"""Shared fixtures: the real configs composed with Hydra, and the repo's paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
os.environ.setdefault("CNNLAB_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    """Once TensorFlow is in this worker, take it out of the garbage collector's sight (`gc.freeze`), as
    run.py does (`cnnlab.backend.freeze_imports`): each later full collection, one per in-process run's
    `clear_session` and more, would walk its objects again (test_train.py alone: 9.8 CPU-s in 23)."""
    import gc

    if "tensorflow" in sys.modules and not gc.get_freeze_count():
        gc.collect()  # the garbage so far is freed, not frozen
        gc.freeze()


@pytest.fixture
def compose():
    """compose(*overrides) → the composed DictConfig, exactly as run.py would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, config_dir: Path = CONF_DIR):
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))

    return _compose


def run_cli(*args: str, timeout: int = 600, env: dict | None = None):
    """Run `python run.py ARGS` from the repo root; return the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )
