"""Optimizers (config group `optimizer`): name + hyperparameters → `keras.optimizers.*`.

Example:
    >>> check_optimizer({"name": "sgd", "lr": 0.05}, "optimizer")
    {'name': 'sgd', 'lr': 0.05, 'momentum': 0.0, 'nesterov': False}
"""

from __future__ import annotations

from cnnlab.errors import ConfigError
from cnnlab.fields import Field, boolean, check_fields, choice, fraction, positive_number, show, unit_interval_open

_LR = {"lr": Field(positive_number)}
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


def check_optimizer(cfg, path: str = "optimizer") -> dict:
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(f"{path}.name", f"is required (one of {' | '.join(OPTIMIZERS)}), got {show(cfg)}")
    name = choice(*OPTIMIZERS)(cfg["name"], f"{path}.name")
    rest = check_fields({k: v for k, v in cfg.items() if k != "name"}, OPTIMIZERS[name][1], path)
    return {"name": name, **rest}


def make_optimizer(spec: dict):
    """A fresh Keras optimizer for one run."""
    import keras

    kwargs = {k: v for k, v in spec.items() if k not in ("name", "lr")}
    return getattr(keras.optimizers, OPTIMIZERS[spec["name"]][0])(learning_rate=spec["lr"], **kwargs)
