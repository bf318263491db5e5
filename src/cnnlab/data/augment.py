"""Training-image augmentation (config group `augment`): Keras preprocessing layers on training batches only.

Written as the model's layers are, a mapping of named rows with a `type:`:

    name: shift
    layers:
      shift: {type: translation, height_factor: 0.1, width_factor: 0.1}

Types and their arguments (defaults in TYPES): `flip` (mode), `translation`
(height_factor, width_factor, fill_mode), `crop` (padding: zero-pad each side, then a
random crop back to the image size), `rotation` (factor, a fraction of a full turn;
fill_mode), `zoom` (height_factor, width_factor; fill_mode), `contrast` (factor).

Where it runs: `cnnlab.data.pipeline` applies the rows in order to each training batch
(pixels already scaled to [0, 1]) as the batch is drawn. Validation, test, `cnnlab.evaluate`
and the logged (served) model never see it: the network itself has no augmentation layer.
Batch i is augmented with random numbers seeded from (`trainer.seed`, i) alone, so a
rerun with `trainer.deterministic=true` is bit-exact and a resumed run augments batch i
as the uninterrupted run did.

Example:
    >>> check_augment({"name": "shift", "layers": {"s": {"type": "translation", "height_factor": 0.1}}}).rows
    (('s', 'translation', {'height_factor': 0.1, 'width_factor': 0.1, 'fill_mode': 'constant'}),)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.config.fields import Field, check_fields, choice, closest, show, string
from cnnlab.errors import ConfigError


def factor(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(path, f"expected a factor in [0, 1), got {show(v)}")
    return float(v)


def padding(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(path, f"expected a positive number of pixels, got {show(v)}")
    return v


FILL = Field(choice("constant", "reflect", "wrap", "nearest"), "constant")
TYPES = {
    "flip": {"mode": Field(choice("horizontal", "vertical", "horizontal_and_vertical"), "horizontal")},
    "translation": {"height_factor": Field(factor, 0.1), "width_factor": Field(factor, 0.1), "fill_mode": FILL},
    "crop": {"padding": Field(padding, 4)},
    "rotation": {"factor": Field(factor, 0.05), "fill_mode": FILL},
    "zoom": {"height_factor": Field(factor, 0.1), "width_factor": Field(factor, 0.1), "fill_mode": FILL},
    "contrast": {"factor": Field(factor, 0.2)},
}


@dataclass(frozen=True)
class AugmentConfig:
    name: str
    rows: tuple[tuple[str, str, dict], ...]  # (row name, type, checked arguments), applied in order

    def describe(self) -> str:
        if not self.rows:
            return "augment: none (training batches as they are)"
        shown = "; ".join(f"{n}: {t}(" + ", ".join(f"{k}={show(v)}" for k, v in a.items()) + ")"
                          for n, t, a in self.rows)
        return f"augment: {self.name}, on training batches only: {shown}"


def check_augment(cfg, path: str = "augment") -> AugmentConfig:
    spec = {"name": Field(string, "custom"), "layers": Field(lambda v, _: v, {})}
    d = check_fields(cfg if cfg is not None else {}, spec, path)
    layers = d["layers"] or {}
    if not isinstance(layers, dict):
        raise ConfigError(f"{path}.layers", f"expected a mapping of named rows, got {show(layers)}")
    rows = []
    for name, row in layers.items():
        where = f"{path}.layers.{name}"
        if not isinstance(row, dict) or "type" not in row:
            raise ConfigError(where, f"expected a mapping with a type ({', '.join(TYPES)}), got {show(row)}")
        kind = row["type"]
        if kind not in TYPES:
            raise ConfigError(f"{where}.type", f"{show(kind)} is not an augmentation{closest(str(kind), TYPES)} "
                                               f"(known: {', '.join(TYPES)})")
        args = check_fields({k: v for k, v in row.items() if k != "type"}, TYPES[kind], where)
        rows.append((name, kind, args))
    return AugmentConfig(d["name"], tuple(rows))


class Augmenter:
    """`augmenter(x, i)`: training batch i (float32 NHWC in [0, 1]) augmented, seeded by (seed, i).

    `value_range`: the pixels' range (contrast clips to it): [0, 1], or wider under `dataset.normalize`.
    """

    def __init__(self, config: AugmentConfig, seed: int, image_shape, value_range=(0.0, 1.0)):
        from cnnlab.backend import keras

        L = keras.layers
        h, w = image_shape[0], image_shape[1]
        self.steps = []
        for i, (name, kind, a) in enumerate(config.rows):
            s = seed * 7919 + i  # each row its own stream
            if kind == "flip":
                layer = L.RandomFlip(a["mode"], seed=s)
            elif kind == "translation":
                layer = L.RandomTranslation(a["height_factor"], a["width_factor"], fill_mode=a["fill_mode"], seed=s)
            elif kind == "crop":
                layer = L.RandomCrop(h, w, seed=s)
            elif kind == "rotation":
                layer = L.RandomRotation(a["factor"], fill_mode=a["fill_mode"], seed=s)
            elif kind == "zoom":
                layer = L.RandomZoom(a["height_factor"], a["width_factor"], fill_mode=a["fill_mode"], seed=s)
            else:
                layer = L.RandomContrast(a["factor"], value_range=value_range, seed=s)
            self.steps.append((kind, a, layer, s))
        self.keras = keras

    def __call__(self, x: np.ndarray, batch: int) -> np.ndarray:
        ops = self.keras.ops
        out = ops.convert_to_tensor(np.asarray(x, dtype=np.float32))
        for kind, a, layer, s in self.steps:
            if kind == "crop":
                p = a["padding"]
                out = ops.pad(out, [[0, 0], [p, p], [p, p], [0, 0]])
            state = layer.generator.state
            state.assign(ops.cast(ops.convert_to_tensor([s % 2**31, batch % 2**31]), state.dtype))
            out = layer(out, training=True)
        return np.asarray(ops.convert_to_numpy(out), dtype=np.float32)
