"""Validate a whole composed config before anything heavy runs (above the groups whose rules it gathers).

`check_config` resolves interpolations, checks every group with its own
module's rules and the rules between groups (the model must take the data
set's images and emit one logit per class), and returns a `RunConfig`: each
group as its typed, frozen config (`TrainerConfig`, `DatasetConfig`, ...).
It imports neither tensorflow nor mlflow, so a bad config fails in well
under two seconds.

Example (composing the real configs, as the tests do):
    >>> from hydra import compose, initialize_config_dir
    >>> with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    ...     cfg = compose("config", overrides=["model=ltfn5", "init=he"])
    >>> run = check_config(cfg)
    >>> run.arch.total_params, run.trainer.batch_size, run.optimizer.name
    (321738, 100, 'sgd')
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.config.compose import CONF_DIR, to_plain  # noqa: F401 (CONF_DIR: for this module's example)
from cnnlab.config.fields import boolean, closest, optional, show, string
from cnnlab.config.guard import redacted_config, refuse_targets
from cnnlab.data.augment import AugmentConfig, check_augment
from cnnlab.data.datasets import DatasetConfig, check_dataset, with_folder_classes
from cnnlab.errors import ConfigError
from cnnlab.model.builder import Architecture, check_model
from cnnlab.model.memory import check_memory
from cnnlab.record.tracking import TrackingConfig, check_tracking
from cnnlab.run.optimizers import OptimizerConfig, check_optimizer
from cnnlab.run.trainer import TrainerConfig, check_trainer
from cnnlab.run.trial import TrialConfig, check_trial

GROUPS = ("model", "init", "dataset", "optimizer", "trainer", "tracking", "augment")
TOP_LEVEL = (*GROUPS, "dry_run", "resume", "optuna")  # optuna: set per job by hydra/sweeper=cnnlab_optuna


@dataclass
class RunConfig:
    """A validated run: each group as its typed config, the model as a checked architecture."""

    arch: Architecture
    dataset: DatasetConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    dry_run: bool
    resolved: dict  # the resolved config as the user wrote it, for logging: oc.env values, URI credentials `***`
    resume: str | None = None  # a run id to continue, or "last" (cnnlab.run.resume)
    augment: AugmentConfig | None = None  # training-batch augmentation (cnnlab.data.augment)
    trial: TrialConfig | None = None  # the Optuna trial this sweep job reports to (cnnlab.run.trial)


def check_config(cfg) -> RunConfig:
    """Validate a composed config (DictConfig or plain dict). Raises ConfigError."""
    cfg = with_folder_classes(cfg)  # dataset=folder's `num_classes: auto`: the class folders counted
    plain = to_plain(cfg)
    refuse_targets(plain)
    for key in plain:
        if key not in TOP_LEVEL:
            raise ConfigError(key, f"unknown top-level key{closest(key, TOP_LEVEL)} (known: {', '.join(TOP_LEVEL)})")
    for group in GROUPS:
        if group not in plain:
            raise ConfigError(group, f"is missing: choose one, e.g. {group}=<name>")

    arch = check_model(plain["model"], plain["init"])
    dataset = check_dataset(plain["dataset"])
    if arch.input_shape != dataset.input_shape:
        raise ConfigError(
            "model.input_shape",
            f"{show(list(arch.input_shape))} but dataset {dataset.name} gives {show(list(dataset.input_shape))} images",
        )
    last = arch.rows[-1]
    if arch.output_shape != (dataset.num_classes,):
        raise ConfigError(
            f"model.layers.{last.name}",
            f"the output layer emits {show(list(arch.output_shape))} per image but dataset {dataset.name} "
            f"has {dataset.num_classes} classes: end with a flat ({dataset.num_classes},) output",
        )
    trainer = check_trainer(plain["trainer"])
    # per device: each holds the weights and its share of the batch (auto: the count is known later; the whole batch)
    per_device = trainer.batch_size // (trainer.devices if isinstance(trainer.devices, int) else 1)
    check_memory(arch, per_device, trainer.memory_budget_mb)  # too big for memory: fails here, not in TF
    return RunConfig(
        arch=arch,
        dataset=dataset,
        optimizer=check_optimizer(plain["optimizer"]),
        trainer=trainer,
        tracking=check_tracking(plain["tracking"]),
        dry_run=boolean(plain.get("dry_run", False), "dry_run"),
        resume=optional(string)(plain.get("resume"), "resume"),
        augment=check_augment(plain["augment"]),
        trial=check_trial(plain.get("optuna")),
        resolved=redacted_config(cfg, plain),  # the real tracking.uri stays in `tracking`, which connects
    )
