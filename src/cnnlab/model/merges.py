"""Merging layer kinds: several inputs (`inputs: [a, b, ...]`) → one output (add, multiply, concat).

Registered in `cnnlab.model.layers`'s registry when the `cnnlab.model` package is imported.

Example:
    >>> from cnnlab.model.layers import LAYER_KINDS
    >>> LAYER_KINDS["concat"].output_shape([(7, 7, 32), (7, 7, 64)], {}, "model.layers.join")
    (7, 7, 96)
"""

from __future__ import annotations

from cnnlab.errors import ConfigError
from cnnlab.model.layers import LayerKind, _batch, register


class _Merge(LayerKind):
    args = {}
    merges = True
    keras_class = ""

    def check_inputs(self, shapes: list, path: str, sources: list) -> None:
        """Rank and shape rules across the inputs; ConfigError at `<path>.inputs` naming two that disagree."""
        for shape, source in zip(shapes[1:], sources[1:]):
            if len(shape) != len(shapes[0]):
                raise ConfigError(
                    f"{path}.inputs",
                    f"{self.name} needs inputs of one rank but {sources[0]} gives {_batch(shapes[0])} "
                    f"and {source} gives {_batch(shape)}",
                )

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [getattr(keras.layers, self.keras_class)(name=name)]


class _Elementwise(_Merge):
    def check_inputs(self, shapes, path, sources):
        for shape, source in zip(shapes[1:], sources[1:]):
            if shape != shapes[0]:
                raise ConfigError(
                    f"{path}.inputs",
                    f"{self.name} needs inputs of one shape but {sources[0]} gives {_batch(shapes[0])} "
                    f"and {source} gives {_batch(shape)}",
                )

    def output_shape(self, shapes, args, path):
        return shapes[0]


@register("add")
class Add(_Elementwise):
    """Element-wise sum of inputs of one shape (a residual connection)."""

    keras_class = "Add"


@register("multiply")
class Multiply(_Elementwise):
    """Element-wise product of inputs of one shape (gating)."""

    keras_class = "Multiply"


@register("concat")
class Concat(_Merge):
    """Joins inputs along the channel (last) axis: same spatial size, channels add up."""

    keras_class = "Concatenate"

    def check_inputs(self, shapes, path, sources):
        super().check_inputs(shapes, path, sources)
        for shape, source in zip(shapes[1:], sources[1:]):
            if shape[:-1] != shapes[0][:-1]:
                what = "spatial size" if len(shape) == 3 else "shape but the last axis"
                raise ConfigError(
                    f"{path}.inputs",
                    f"concat needs inputs of one {what} but {sources[0]} gives {_batch(shapes[0])} "
                    f"and {source} gives {_batch(shape)}",
                )

    def output_shape(self, shapes, args, path):
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [keras.layers.Concatenate(axis=-1, name=name)]
