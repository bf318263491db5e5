"""Data sets (config group `dataset`): MNIST, Fashion-MNIST, CIFAR-10 and a synthetic set.

Example:
    >>> check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}, "dataset")["val_size"]
    5000
"""

from __future__ import annotations

from cnnlab.errors import ConfigError
from cnnlab.fields import Field, check_fields, choice, non_negative_int, optional, positive_int, shape, show, string

# name → the image shape its files hold
KNOWN_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
DATASET_FIELDS = {
    "name": Field(choice(*KNOWN_SHAPES, "synthetic")),
    "path": Field(optional(string), None),
    "input_shape": Field(shape),
    "num_classes": Field(positive_int),
    "val_size": Field(non_negative_int, 5000),
    "train_size": Field(optional(positive_int), None),
    "test_size": Field(optional(positive_int), None),
}


def check_dataset(cfg, path: str = "dataset") -> dict:
    d = check_fields(cfg, DATASET_FIELDS, path)
    known = KNOWN_SHAPES.get(d["name"])
    if known and d["input_shape"] != known:
        raise ConfigError(
            f"{path}.input_shape", f"{show(list(d['input_shape']))} but {d['name']} images are {show(list(known))}"
        )
    if d["train_size"] is not None and d["val_size"] >= d["train_size"]:
        raise ConfigError(
            f"{path}.val_size", f"{d['val_size']} leaves no training images out of train_size {d['train_size']}"
        )
    return d
