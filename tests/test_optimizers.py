"""Every optimizer preset builds its Keras optimizer; `schedule: cosine` spans the run's budget."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR

from cnnlab.backend import keras
from cnnlab.run.optimizers import make_optimizer
from cnnlab.schema import check_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_keras_optimizer(compose, preset):
    spec = check_config(compose(f"optimizer={preset}")).optimizer
    opt = make_optimizer(spec, total_steps=100)
    assert type(opt).__name__.lower() == spec.name
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(spec.lr)


def test_cosine_schedule_decays_to_zero_over_the_budget(compose):
    spec = check_config(compose("optimizer=adam", "optimizer.lr=0.01", "optimizer.schedule=cosine")).optimizer
    config = make_optimizer(spec, total_steps=200).get_config()["learning_rate"]
    schedule = keras.optimizers.schedules.deserialize(config)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay) and schedule.decay_steps == 200
    at = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 100, 200)]
    assert at == pytest.approx([0.01, 0.005, 0.0], abs=1e-7)


def test_an_optimizers_own_keys_reach_keras(compose):
    spec = check_config(compose("optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true")).optimizer
    assert (spec.name, spec.options) == ("sgd", {"momentum": 0.9, "nesterov": True})
    config = make_optimizer(spec, total_steps=10).get_config()
    assert config["momentum"] == pytest.approx(0.9) and config["nesterov"] is True
