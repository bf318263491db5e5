"""Layer stack (config group `model`) → checked architecture → shape table → `keras.Model`.

`check_model` validates the YAML stack and computes every layer's output
shape and parameter count in pure Python, before any Keras layer exists;
`build_model` then makes the Keras model and `verify_model` confirms that
Keras agrees with the table.

Example:
    >>> arch = check_model(
    ...     {"name": "tiny", "input_shape": [28, 28, 1], "layers": {
    ...         "conv1": {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
    ...         "pool1": {"type": "max_pool"},
    ...         "flatten": {"type": "flatten"},
    ...         "logits": {"type": "dense", "units": 10}}},
    ...     {"hidden": {"scheme": "he_normal"}, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "zeros"}})
    >>> arch.rows[1].output_shape, arch.total_params
    ((13, 13, 8), 13610)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnnlab.config.fields import Field, check_fields, optional, shape, show, string
from cnnlab.errors import ConfigError
from cnnlab.model.initializers import check_init_group, describe, layer_seed, make_initializer
from cnnlab.model.layers import LayerKind, layer_kind

MODEL_FIELDS = {
    "name": Field(string),
    "input_shape": Field(shape),
    "description": Field(optional(string), None),
    "layers": Field(lambda v, p: v),
}
LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class Row:
    name: str
    kind: LayerKind
    args: dict
    output_shape: tuple
    params: int
    kernel_init: dict | None  # resolved init spec, None for layers without weights
    bias_init: dict | None


@dataclass
class Architecture:
    name: str
    input_shape: tuple
    rows: list[Row]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def output_shape(self) -> tuple:
        return self.rows[-1].output_shape if self.rows else self.input_shape


def check_model(model_cfg, init_cfg, path: str = "model", init_path: str = "init") -> Architecture:
    """Validate a layer stack and compute its shape table. Raises ConfigError."""
    model = check_fields(model_cfg, MODEL_FIELDS, path)
    roles = check_init_group(init_cfg, init_path)
    layers = model["layers"]
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{path}.layers", f"expected a non-empty mapping of layer names to layers, got {show(layers)}")

    rows: list[Row] = []
    padding_layers: set[str] = set()
    shape_in, source = model["input_shape"], "the input"
    for name, values in layers.items():
        layer_path = f"{path}.layers.{name}"
        if values is None:  # `model.layers.drop1=null` removes a layer
            continue
        if not isinstance(name, str) or not LAYER_NAME.match(name):
            raise ConfigError(layer_path, "a layer name must start with a letter and hold only letters, digits and _")
        if name == "input":
            raise ConfigError(layer_path, "the name 'input' is taken by the model's input layer; rename the layer")
        if not isinstance(values, dict):
            raise ConfigError(layer_path, f"expected a mapping such as {{type: conv2d, ...}}, got {show(values)}")
        if "type" not in values:
            raise ConfigError(f"{layer_path}.type", "is required but missing")
        kind = layer_kind(values["type"], layer_path)
        args = kind.check_args(values, layer_path)
        kind.check_input(shape_in, layer_path, source)
        shape_out = kind.output_shape(shape_in, args, layer_path)
        rows.append(Row(name, kind, args, shape_out, kind.param_count(shape_in, args), None, None))
        if isinstance(args.get("padding"), tuple):  # explicit padding adds a ZeroPadding2D named <name>_pad
            padding_layers.add(f"{name}_pad")
        shape_in, source = shape_out, name

    if not rows:
        raise ConfigError(f"{path}.layers", "every layer is null: the model has no layers")
    for r in rows:
        if r.name in padding_layers:
            raise ConfigError(f"{path}.layers.{r.name}",
                              f"the name {r.name!r} is taken by the ZeroPadding2D of {r.name[:-4]}'s explicit padding")
    weighted = [r for r in rows if r.kind.has_kernel]
    for r in weighted:
        r.kernel_init = r.args["init"] or roles["output" if r is weighted[-1] else "hidden"]
        if r.args["use_bias"]:
            r.bias_init = r.args["bias_init"] or roles["bias"]
    return Architecture(model["name"], model["input_shape"], rows)


def _fmt_shape(s: tuple) -> str:
    return "(None, " + ", ".join(str(d) for d in s) + ")"


def shape_table(arch: Architecture) -> str:
    """The per-layer table printed by dry runs and logged with every run."""
    head = ("layer", "type", "output shape", "params", "init (kernel / bias)")
    body = []
    for r in arch.rows:
        init = ""
        if r.kernel_init:
            init = describe(r.kernel_init) + (" / " + describe(r.bias_init) if r.bias_init else " / no bias")
        body.append((r.name, r.kind.name, _fmt_shape(r.output_shape), f"{r.params:,}", init))
    rows = [("input", "", _fmt_shape(arch.input_shape), "", ""), *body]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(head))
    total = f"Total params: {arch.total_params:,}   output: {_fmt_shape(arch.output_shape)}"
    return "\n".join([f"Model: {arch.name}", line(head), rule, *map(line, rows), rule, total])


def build_model(arch: Architecture, seed: int):
    """Make the `keras.Model`; each weighted layer gets its own seeded initializer instances."""
    from cnnlab.backend import keras

    inputs = keras.Input(shape=arch.input_shape, name="input")
    x = inputs
    for position, r in enumerate(arch.rows):
        kernel = make_initializer(r.kernel_init, layer_seed(seed, position, 0)) if r.kernel_init else None
        bias = make_initializer(r.bias_init, layer_seed(seed, position, 1)) if r.bias_init else None
        for layer in r.kind.build(r.name, r.args, kernel, bias):
            if r is arch.rows[-1]:
                layer.dtype_policy = "float32"  # under mixed precision the logits and loss stay float32
            x = layer(x)
    return keras.Model(inputs, x, name=arch.name)


def verify_model(arch: Architecture, model) -> None:
    """Raise if Keras disagrees with the table about any layer's output shape or parameter count."""
    for r in arch.rows:
        layer = model.get_layer(r.name)
        keras_shape = tuple(layer.output.shape[1:])
        params = layer.count_params()
        if keras_shape != r.output_shape or params != r.params:
            raise AssertionError(
                f"layer {r.name}: table says {_fmt_shape(r.output_shape)} / {r.params} params, "
                f"Keras built {_fmt_shape(keras_shape)} / {params} params"
            )
    if model.count_params() != arch.total_params:
        raise AssertionError(f"total params: table {arch.total_params}, Keras {model.count_params()}")
