"""A checked run is typed: each group is a frozen dataclass whose fields carry their rules (one declaration)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest

from cnnlab.config.fields import rules
from cnnlab.data.datasets import DatasetConfig
from cnnlab.errors import ConfigError
from cnnlab.record.tracking import TrackingConfig
from cnnlab.run.optimizers import OPTIMIZERS, OptimizerConfig
from cnnlab.run.trainer import TrainerConfig, check_trainer
from cnnlab.schema import check_config


def test_each_key_is_declared_once_with_its_rule():
    """The dataclass is the declaration: its fields are the keys checked, in order, with their defaults."""
    assert list(rules(TrainerConfig)) == [f.name for f in fields(TrainerConfig)]
    assert rules(TrainerConfig)["batch_size"].default == 100 and rules(TrackingConfig)["experiment"].default == "cnnlab"
    with pytest.raises(ConfigError, match=r"^trainer.batch_sise: unknown key; did you mean 'batch_size'\?"):
        check_trainer({"batch_sise": 10}, "trainer")
    assert TrainerConfig().steps == 1000  # the defaults are the dataclass's own


def test_a_composed_config_checks_into_typed_groups(compose):
    run = check_config(compose("model=tiny", "dataset=synthetic", "optimizer=adam", "trainer.steps=7",
                               "tracking.experiment=typed"))
    assert isinstance(run.trainer, TrainerConfig) and run.trainer.steps == 7 and run.trainer.batch_size == 100
    assert isinstance(run.dataset, DatasetConfig) and run.dataset.input_shape == (28, 28, 1)
    assert isinstance(run.tracking, TrackingConfig) and run.tracking.experiment == "typed"
    assert isinstance(run.optimizer, OptimizerConfig) and set(run.optimizer.options) == \
        set(OPTIMIZERS["adam"][1]) - {"lr", "schedule"}
    with pytest.raises(FrozenInstanceError):
        run.trainer.steps = 8  # a checked value stays checked: change it with dataclasses.replace
