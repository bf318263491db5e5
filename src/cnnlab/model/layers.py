"""The registry of layer kinds: YAML `type` → arguments, shape rule, parameter count, Keras layers.

A layer kind is a subclass of `LayerKind` decorated with `@register("name")`;
that is the one place a new kind is added. Shapes and parameter counts are
computed here in pure Python, with TensorFlow's rules, so that a config is
checked before tensorflow is imported. Keras is only touched in `build`.

Shapes exclude the batch axis: (28, 28, 1) means a (None, 28, 28, 1) tensor.
A merging kind (`merges = True`: add, multiply, concat; `cnnlab.model.merges`) takes a list
of inputs: `check_inputs` compares their shapes and `output_shape` gets the list.

Example:
    >>> kind = LAYER_KINDS["conv2d"]
    >>> args = kind.check_args({"filters": 64, "kernel_size": 3, "padding": "same"}, "model.layers.conv1")
    >>> kind.output_shape((28, 28, 1), args, "model.layers.conv1")
    (28, 28, 64)
    >>> kind.param_count((28, 28, 1), args)
    640
"""

from __future__ import annotations

import math
from typing import Any

from cnnlab.config.fields import (
    Field,
    boolean,
    check_fields,
    choice,
    closest,
    fraction,
    optional,
    positive_int,
    positive_number,
    positive_pair,
    show,
)
from cnnlab.errors import ConfigError
from cnnlab.model.initializers import check_init

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "leaky_relu", "swish", "softmax", "linear")
activation = optional(choice(*ACTIVATIONS))
pool_padding = choice("valid", "same")


def padding(v: Any, path: str):
    """'same' | 'valid' | int | [h, w] | [[top, bottom], [left, right]] → 'same', 'valid' or ((t, b), (l, r))."""
    if v in ("same", "valid"):
        return v

    def ok(x):
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if ok(v):
        return ((v, v), (v, v))
    if isinstance(v, (list, tuple)) and len(v) == 2:
        if all(ok(x) for x in v):
            return ((v[0], v[0]), (v[1], v[1]))
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(ok(x) for x in p) for p in v):
            return ((v[0][0], v[0][1]), (v[1][0], v[1][1]))
    raise ConfigError(
        path,
        f"{show(v)} is not a padding: use 'same', 'valid', an int >= 0, [h, w] or [[top, bottom], [left, right]]",
    )


def _dims(shape: tuple) -> str:
    return "×".join(str(d) for d in shape)


def _batch(shape: tuple) -> str:
    return "(None, " + ", ".join(str(d) for d in shape) + ")"


def window_output(size: int, window: int, stride: int, pad: str | tuple[int, int]) -> int:
    """One spatial output size by TensorFlow's rule; 0 when the window does not fit.

    `window` is the effective window (for a dilated kernel: d·(k−1)+1).
    'same' → ceil(n/s); 'valid' → floor((n−k)/s)+1; explicit (before, after) pads first.

    >>> window_output(28, 3, 2, "same"), window_output(28, 3, 2, "valid"), window_output(7, 9, 1, "valid")
    (14, 13, 0)
    """
    if pad == "same":
        return math.ceil(size / stride)
    padded = size if pad == "valid" else size + pad[0] + pad[1]
    return 0 if window > padded else (padded - window) // stride + 1


def spatial_output(shape: tuple, windows: tuple, strides: tuple, pad, path: str, key: str, value) -> tuple[int, int]:
    """(height, width) after a windowed layer, or a ConfigError naming `key` when it collapses."""
    out = tuple(
        window_output(shape[a], windows[a], strides[a], pad if isinstance(pad, str) else pad[a]) for a in (0, 1)
    )
    if min(out) <= 0:
        how = f"padding {show(pad)}" if isinstance(pad, str) else f"padding {show([list(p) for p in pad])}"
        shown = value if isinstance(value, str) else show(value)
        raise ConfigError(f"{path}.{key}", f"{shown} does not fit the {_dims(shape[:2])} input it receives ({how})")
    return out


class LayerKind:
    """One YAML layer `type`. Subclasses set `args` and implement the shape rule and `build`."""

    name: str = ""
    args: dict[str, Field] = {}
    has_kernel = False  # gets an initializer by role (hidden / output)
    kernel_slots = (0,)  # seed slots of its kernels: one initializer instance each (separable: depthwise, pointwise)
    needs = None  # None: any input; 3: (h, w, c); 1: (features,)
    merges = False  # True: takes a list of >= 2 inputs (`add`, `concat`, ...) and `output_shape` gets their shapes

    def check_args(self, values: dict, path: str) -> dict:
        values = {k: v for k, v in values.items() if k != "type"}
        args = check_fields(values, self.args, path)
        self.check_combination(args, path)
        return args

    def check_combination(self, args: dict, path: str) -> None:
        """Cross-argument rules (e.g. dilation with strides)."""

    def check_input(self, shape: tuple, path: str, source: str) -> None:
        if self.needs == 3 and len(shape) != 3:
            raise ConfigError(
                path,
                f"{self.name} needs a (batch, height, width, channels) input but receives {_batch(shape)} "
                f"from {source}",
            )
        if self.needs == 1 and len(shape) != 1:
            raise ConfigError(
                path,
                f"{self.name} needs a flat (batch, features) input but receives {_batch(shape)} from {source}; "
                "put a flatten or global pooling layer before it",
            )

    def output_shape(self, shape: tuple, args: dict, path: str) -> tuple:
        return shape

    def param_count(self, shape: tuple, args: dict) -> int:
        return 0

    def build(self, name: str, args: dict, kernel_init=None, bias_init=None) -> list:
        """The Keras layer(s) for this config layer; the last one carries `name`.

        Applied in order to the layer's input (for a merging kind: to the list of its inputs).
        With several `kernel_slots`, `kernel_init` is a tuple of initializers, one per slot.
        """
        raise NotImplementedError


LAYER_KINDS: dict[str, LayerKind] = {}


def register(name: str):
    """Class decorator: make a LayerKind available as YAML `type: name`."""

    def deco(cls):
        cls.name = name
        LAYER_KINDS[name] = cls()
        return cls

    return deco


def layer_kind(type_: Any, path: str) -> LayerKind:
    if not isinstance(type_, str) or type_ not in LAYER_KINDS:
        known = ", ".join(LAYER_KINDS)
        raise ConfigError(f"{path}.type",
                          f"unknown layer type {show(type_)}{closest(type_, LAYER_KINDS)} (known: {known})")
    return LAYER_KINDS[type_]


# per-layer overrides of the `init` group: kernel and bias initializer
INIT_ARGS = {"init": Field(optional(check_init), None), "bias_init": Field(optional(check_init), None)}


class _Conv(LayerKind):
    """Shared by conv2d, separable_conv2d and depthwise_conv2d: window, strides, padding, dilation."""

    args = {
        "kernel_size": Field(positive_pair),
        "strides": Field(positive_pair, (1, 1)),
        "padding": Field(padding, "valid"),
        "dilation_rate": Field(positive_pair, (1, 1)),
        "activation": Field(activation, None),
        "use_bias": Field(boolean, True),
        **INIT_ARGS,
    }
    has_kernel = True
    needs = 3

    def check_combination(self, args, path):
        if max(args["strides"]) > 1 and max(args["dilation_rate"]) > 1:
            raise ConfigError(
                f"{path}.dilation_rate",
                f"{show(list(args['dilation_rate']))} cannot be combined with strides "
                f"{show(list(args['strides']))} (Keras allows one of them > 1, not both)",
            )

    def channels(self, shape, args) -> int:
        return args["filters"]

    def output_shape(self, shape, args, path):
        windows = tuple(d * (k - 1) + 1 for k, d in zip(args["kernel_size"], args["dilation_rate"]))
        shown = _as_given(args["kernel_size"])
        if windows != args["kernel_size"]:
            shown = f"{show(shown)} (dilated to {show(_as_given(windows))})"
        h, w = spatial_output(shape, windows, args["strides"], args["padding"], path, "kernel_size", shown)
        return (h, w, self.channels(shape, args))

    def keras_layer(self, keras, name, args, pad, kernel_init, bias_init):
        raise NotImplementedError

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        pad = args["padding"]
        layers = []
        if not isinstance(pad, str):
            layers.append(keras.layers.ZeroPadding2D(padding=pad, name=f"{name}_pad"))
            pad = "valid"
        layers.append(self.keras_layer(keras, name, args, pad, kernel_init, bias_init))
        return layers


@register("conv2d")
class Conv2D(_Conv):
    args = {"filters": Field(positive_int), **_Conv.args}

    def param_count(self, shape, args):
        kh, kw = args["kernel_size"]
        return kh * kw * shape[2] * args["filters"] + (args["filters"] if args["use_bias"] else 0)

    def keras_layer(self, keras, name, args, pad, kernel_init, bias_init):
        return keras.layers.Conv2D(
            args["filters"], args["kernel_size"], strides=args["strides"], padding=pad,
            dilation_rate=args["dilation_rate"], activation=args["activation"], use_bias=args["use_bias"],
            kernel_initializer=kernel_init, bias_initializer=bias_init, name=name,
        )


def _as_given(pair: tuple[int, int]):
    """Show (3, 3) back as 3, the way the user most likely wrote it."""
    return pair[0] if pair[0] == pair[1] else list(pair)


class _Pool(LayerKind):
    args = {
        "pool_size": Field(positive_pair, (2, 2)),
        "strides": Field(optional(positive_pair), None),
        "padding": Field(pool_padding, "valid"),
    }
    needs = 3
    keras_class = ""

    def check_args(self, values, path):
        args = super().check_args(values, path)
        if args["strides"] is None:  # Keras's default: strides = pool_size
            args["strides"] = args["pool_size"]
        return args

    def output_shape(self, shape, args, path):
        h, w = spatial_output(shape, args["pool_size"], args["strides"], args["padding"], path, "pool_size",
                              _as_given(args["pool_size"]))
        return (h, w, shape[2])

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        cls = getattr(keras.layers, self.keras_class)
        return [cls(pool_size=args["pool_size"], strides=args["strides"], padding=args["padding"], name=name)]


@register("max_pool")
class MaxPool(_Pool):
    keras_class = "MaxPooling2D"


@register("avg_pool")
class AvgPool(_Pool):
    keras_class = "AveragePooling2D"


class _GlobalPool(LayerKind):
    args = {}
    needs = 3
    keras_class = ""

    def output_shape(self, shape, args, path):
        return (shape[2],)

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [getattr(keras.layers, self.keras_class)(name=name)]


@register("global_avg_pool")
class GlobalAvgPool(_GlobalPool):
    keras_class = "GlobalAveragePooling2D"


@register("global_max_pool")
class GlobalMaxPool(_GlobalPool):
    keras_class = "GlobalMaxPooling2D"


@register("flatten")
class Flatten(LayerKind):
    args = {}

    def output_shape(self, shape, args, path):
        return (math.prod(shape),)

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [keras.layers.Flatten(name=name)]


@register("dense")
class Dense(LayerKind):
    args = {
        "units": Field(positive_int),
        "activation": Field(activation, None),
        "use_bias": Field(boolean, True),
        **INIT_ARGS,
    }
    has_kernel = True
    needs = 1

    def output_shape(self, shape, args, path):
        return (args["units"],)

    def param_count(self, shape, args):
        return shape[0] * args["units"] + (args["units"] if args["use_bias"] else 0)

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [
            keras.layers.Dense(
                args["units"], activation=args["activation"], use_bias=args["use_bias"],
                kernel_initializer=kernel_init, bias_initializer=bias_init, name=name,
            )
        ]


@register("dropout")
class Dropout(LayerKind):
    args = {"rate": Field(fraction)}

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [keras.layers.Dropout(args["rate"], name=name)]


@register("batch_norm")
class BatchNorm(LayerKind):
    args = {"momentum": Field(fraction, 0.99), "epsilon": Field(positive_number, 1e-3)}

    def param_count(self, shape, args):
        return 4 * shape[-1]  # gamma, beta (trained) + moving mean, variance (Keras counts all four)

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [keras.layers.BatchNormalization(momentum=args["momentum"], epsilon=args["epsilon"], name=name)]


@register("activation")
class Activation(LayerKind):
    args = {"activation": Field(choice(*ACTIVATIONS))}

    def build(self, name, args, kernel_init=None, bias_init=None):
        from cnnlab.backend import keras

        return [keras.layers.Activation(args["activation"], name=name)]


# --- depthwise and separable convolutions (conv2d's window rules) ---------------------------------------------


@register("separable_conv2d")
class SeparableConv2D(_Conv):
    """Keras's SeparableConv2D: a depthwise k×k convolution, then a pointwise 1×1 one.

    Both kernels take the layer's init (by role, or its own `init:`), each from its own seeded instance.
    """

    args = {"filters": Field(positive_int), "depth_multiplier": Field(positive_int, 1), **_Conv.args}
    kernel_slots = (0, 2)

    def param_count(self, shape, args):
        kh, kw = args["kernel_size"]
        mid = shape[2] * args["depth_multiplier"]
        return kh * kw * mid + mid * args["filters"] + (args["filters"] if args["use_bias"] else 0)

    def keras_layer(self, keras, name, args, pad, kernel_init, bias_init):
        depthwise, pointwise = kernel_init or (None, None)
        return keras.layers.SeparableConv2D(
            args["filters"], args["kernel_size"], strides=args["strides"], padding=pad,
            depth_multiplier=args["depth_multiplier"], dilation_rate=args["dilation_rate"],
            activation=args["activation"], use_bias=args["use_bias"], depthwise_initializer=depthwise,
            pointwise_initializer=pointwise, bias_initializer=bias_init, name=name,
        )


@register("depthwise_conv2d")
class DepthwiseConv2D(_Conv):
    """Keras's DepthwiseConv2D: one k×k filter per input channel (× depth_multiplier); channels = in × multiplier."""

    args = {"depth_multiplier": Field(positive_int, 1), **_Conv.args}

    def channels(self, shape, args):
        return shape[2] * args["depth_multiplier"]

    def param_count(self, shape, args):
        kh, kw = args["kernel_size"]
        out = shape[2] * args["depth_multiplier"]
        return kh * kw * out + (out if args["use_bias"] else 0)

    def keras_layer(self, keras, name, args, pad, kernel_init, bias_init):
        return keras.layers.DepthwiseConv2D(
            args["kernel_size"], strides=args["strides"], padding=pad, depth_multiplier=args["depth_multiplier"],
            dilation_rate=args["dilation_rate"], activation=args["activation"], use_bias=args["use_bias"],
            depthwise_initializer=kernel_init, bias_initializer=bias_init, name=name,
        )
