"""A checked run is typed: each group is a frozen dataclass with exactly the keys its field rules check."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest

from cnnlab.config.schema import check_config
from cnnlab.data.datasets import DATASET_FIELDS, DatasetConfig
from cnnlab.record.tracking import TRACKING_FIELDS, TrackingConfig
from cnnlab.run.optimizers import OPTIMIZERS, OptimizerConfig
from cnnlab.run.trainer import TRAINER_FIELDS, TrainerConfig


@pytest.mark.parametrize("cls, spec", [(TrainerConfig, TRAINER_FIELDS), (DatasetConfig, DATASET_FIELDS),
                                       (TrackingConfig, TRACKING_FIELDS)], ids=lambda v: getattr(v, "__name__", ""))
def test_each_typed_config_has_its_rules_keys(cls, spec):
    assert [f.name for f in fields(cls)] == list(spec)


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
