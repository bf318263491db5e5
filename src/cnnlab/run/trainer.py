"""The training budget and loop settings (config group `trainer`).

Example:
    >>> check_trainer({"steps": 200}, "trainer").batch_size
    100
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.config.fields import (
    Field,
    boolean,
    check_fields,
    choice,
    integer,
    non_negative_number,
    optional,
    positive_int,
    positive_number,
    show,
    string,
)
from cnnlab.errors import ConfigError
from cnnlab.model.memory import memory_budget


def _verbose(v, path):
    if v in ("auto", 0, 1, 2) and not isinstance(v, bool):
        return v
    raise ConfigError(path, f"{show(v)} is not one of auto | 0 | 1 | 2")


def _jit_compile(v, path):
    if v == "auto" or isinstance(v, bool):
        return v
    raise ConfigError(path, f"{show(v)} is not one of auto | true | false")


EARLY_STOPPING_FIELDS = {
    "monitor": Field(choice("val_loss", "val_accuracy"), "val_loss"),
    "patience": Field(positive_int, 3),
    "min_delta": Field(non_negative_number, 0.0),
    "restore_best_weights": Field(boolean, False),
}


def _checkpoint_every(v, path):
    if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return "auto" if v == "auto" else (v or None)
    raise ConfigError(path, f"{show(v)} is not one of auto | a number of steps | null (off)")


def _early_stopping(v, path):
    return check_fields(v, EARLY_STOPPING_FIELDS, path)


TRAINER_FIELDS = {
    "steps": Field(optional(positive_int), 1000),
    "epochs": Field(optional(positive_int), None),
    "batch_size": Field(positive_int, 100),
    "seed": Field(integer, 0),
    "deterministic": Field(boolean, False),
    "shuffle": Field(boolean, True),
    "eval_every": Field(optional(positive_int), 100),
    "early_stopping": Field(optional(_early_stopping), None),
    "verbose": Field(_verbose, "auto"),
    "log_every": Field(optional(positive_int), 10),  # train loss/accuracy every N steps; null: at evaluations only
    # a loss this large is divergence too: N(0,1) weights at a high lr blow up to ~1e26 and then
    # their ReLUs die (the loss falls back to log(10)) without ever reaching NaN
    "max_loss": Field(optional(positive_number), 1e12),
    # fast paths (Keras compile options and dtype policy)
    "jit_compile": Field(_jit_compile, "auto"),
    "steps_per_execution": Field(positive_int, 1),
    "mixed_precision": Field(optional(choice("auto", "mixed_bfloat16", "mixed_float16")), None),
    # auto: tensors on TensorFlow (no Python per batch: a third less CPU in fit; benchmarks/RESULTS.md), else pydataset
    "pipeline": Field(choice("auto", "pydataset", "tensors"), "auto"),
    # resume (cnnlab.run.checkpoints): auto = at each evaluation; null or 0 = no checkpoints
    "checkpoint_every": Field(_checkpoint_every, "auto"),
    "checkpoint_dir": Field(optional(string), None),
    "keep_best": Field(optional(choice("val_accuracy", "val_loss")), None),  # also upload the best weights
    # the size guard (cnnlab.model.memory): auto = half of physical memory, a number of MiB, or null (no guard)
    "memory_budget_mb": Field(memory_budget, "auto"),
}


@dataclass(frozen=True)
class TrainerConfig:
    """A checked `trainer` group (the keys of TRAINER_FIELDS, which gives their rules and defaults)."""

    steps: int | None
    epochs: int | None
    batch_size: int
    seed: int
    deterministic: bool
    shuffle: bool
    eval_every: int | None
    early_stopping: dict | None  # keras.callbacks.EarlyStopping's arguments
    verbose: str | int
    log_every: int | None
    max_loss: float | None
    jit_compile: str | bool
    steps_per_execution: int
    mixed_precision: str | None
    pipeline: str
    checkpoint_every: str | int | None
    checkpoint_dir: str | None
    keep_best: str | None
    memory_budget_mb: str | float | None


def check_trainer(cfg, path: str = "trainer") -> TrainerConfig:
    t = check_fields(cfg, TRAINER_FIELDS, path)
    if (t["steps"] is None) == (t["epochs"] is None):
        raise ConfigError(
            f"{path}.steps",
            f"set exactly one of steps and epochs (got steps={show(t['steps'])}, epochs={show(t['epochs'])})",
        )
    return TrainerConfig(**t)
