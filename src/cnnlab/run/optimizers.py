"""Optimizers (config group `optimizer`): name + hyperparameters → `keras.optimizers.*`.

Example:
    >>> check_optimizer({"name": "sgd", "lr": 0.05}, "optimizer")
    OptimizerConfig(name='sgd', lr=0.05, schedule='constant', options={'momentum': 0.0, 'nesterov': False})

`schedule: cosine` decays the rate from `lr` to 0 over the run's budget
(`keras.optimizers.schedules.CosineDecay`); `constant` keeps it at `lr`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.config.fields import (
    Field,
    boolean,
    check_fields,
    choice,
    fraction,
    positive_number,
    show,
    unit_interval_open,
)
from cnnlab.errors import ConfigError

_LR = {"lr": Field(positive_number), "schedule": Field(choice("constant", "cosine"), "constant")}
_ADAM = {
    "beta_1": Field(unit_interval_open, 0.9),
    "beta_2": Field(unit_interval_open, 0.999),
    "epsilon": Field(positive_number, 1e-7),
}
# name → (Keras class, accepted keys); `lr` is Keras's `learning_rate`
OPTIMIZERS = {
    "sgd": ("SGD", {**_LR, "momentum": Field(fraction, 0.0), "nesterov": Field(boolean, False)}),
    "adam": ("Adam", {**_LR, **_ADAM}),
    "adamw": ("AdamW", {**_LR, "weight_decay": Field(positive_number, 4e-3), **_ADAM}),
    "rmsprop": (
        "RMSprop",
        {**_LR, "rho": Field(unit_interval_open, 0.9), "momentum": Field(fraction, 0.0),
         "epsilon": Field(positive_number, 1e-7)},
    ),
}


@dataclass(frozen=True)
class OptimizerConfig:
    """A checked `optimizer` group: the Keras optimizer's name, rate and schedule, and its other arguments."""

    name: str
    lr: float
    schedule: str
    options: dict  # the named optimizer's own keys (momentum, beta_1, ...), as Keras takes them


def check_optimizer(cfg, path: str = "optimizer") -> OptimizerConfig:
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(f"{path}.name", f"is required (one of {' | '.join(OPTIMIZERS)}), got {show(cfg)}")
    name = choice(*OPTIMIZERS)(cfg["name"], f"{path}.name")
    rest = check_fields({k: v for k, v in cfg.items() if k != "name"}, OPTIMIZERS[name][1], path)
    return OptimizerConfig(name, rest.pop("lr"), rest.pop("schedule"), rest)


def make_optimizer(spec: OptimizerConfig, total_steps: int):
    """A fresh Keras optimizer for one run of `total_steps` optimizer steps."""
    from cnnlab.backend import keras

    lr = spec.lr
    if spec.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    return getattr(keras.optimizers, OPTIMIZERS[spec.name][0])(learning_rate=lr, **spec.options)
