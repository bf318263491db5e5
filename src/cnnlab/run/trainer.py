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
    rule,
    rules,
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


def _devices(v, path):
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ConfigError(path, f"{show(v)} is not one of auto | 1 | a number of devices")


def _early_stopping(v, path):
    return check_fields(v, EARLY_STOPPING_FIELDS, path)


@dataclass(frozen=True)
class TrainerConfig:
    """A checked `trainer` group: each key's type, rule and default, declared once (`cnnlab.config.fields.rule`)."""

    steps: int | None = rule(optional(positive_int), 1000)
    epochs: int | None = rule(optional(positive_int), None)
    batch_size: int = rule(positive_int, 100)  # the global batch: split over trainer.devices
    # data-parallel (cnnlab.run.devices): auto = every accelerator (1 on a CPU-only machine), 1, or a count
    devices: str | int = rule(_devices, 1)
    seed: int = rule(integer, 0)
    deterministic: bool = rule(boolean, False)
    shuffle: bool = rule(boolean, True)
    eval_every: int | None = rule(optional(positive_int), 100)
    early_stopping: dict | None = rule(optional(_early_stopping), None)
    verbose: str | int = rule(_verbose, "auto")
    # train loss/accuracy every N steps; null: at evaluations only
    log_every: int | None = rule(optional(positive_int), 10)
    # a loss this large is divergence too: N(0,1) weights at a high lr blow up to ~1e26 and then
    # their ReLUs die (the loss falls back to log(10)) without ever reaching NaN
    max_loss: float | None = rule(optional(positive_number), 1e12)
    # fast paths (Keras compile options and dtype policy)
    jit_compile: str | bool = rule(_jit_compile, "auto")
    steps_per_execution: int = rule(positive_int, 1)
    mixed_precision: str | None = rule(optional(choice("auto", "mixed_bfloat16", "mixed_float16")), None)
    # auto: tensors on TensorFlow (no Python per batch: a third less CPU in fit; benchmarks/RESULTS.md), else pydataset
    pipeline: str = rule(choice("auto", "pydataset", "tensors"), "auto")
    # resume (cnnlab.run.checkpoints): auto = at each evaluation; null or 0 = no checkpoints
    checkpoint_every: str | int | None = rule(_checkpoint_every, "auto")
    checkpoint_dir: str | None = rule(optional(string), None)
    keep_best: str | None = rule(optional(choice("val_accuracy", "val_loss")), None)  # also upload the best weights
    # the size guard (cnnlab.model.memory): auto = half of physical memory, a number of MiB, or null (no guard)
    memory_budget_mb: str | float | None = rule(memory_budget, "auto")


def check_trainer(cfg, path: str = "trainer") -> TrainerConfig:
    t = check_fields(cfg, rules(TrainerConfig), path)
    if (t["steps"] is None) == (t["epochs"] is None):
        raise ConfigError(
            f"{path}.steps",
            f"set exactly one of steps and epochs (got steps={show(t['steps'])}, epochs={show(t['epochs'])})",
        )
    if isinstance(t["devices"], int) and t["batch_size"] % t["devices"]:
        raise ConfigError(f"{path}.batch_size", f"{t['batch_size']} does not divide over {path}.devices="
                          f"{t['devices']} (the global batch is split evenly: a multiple of {t['devices']})")
    return TrainerConfig(**t)
