"""Layer graph (config group `model`) → checked architecture → shape table → `keras.Model`.

`check_model` validates the YAML layers (block instances written out by
`cnnlab.model.blocks`) and computes every layer's inputs, output shape and
parameter count in pure Python, before any Keras layer exists; `build_model`
then makes the Keras model and `verify_model` confirms that Keras agrees with
the table.

A layer takes the layer before it in the mapping (the first: the model's input)
unless it says `inputs: <layer>` or `inputs: [<layer>, ...]`; an input must be
defined earlier, so a graph has no cycles. The last layer is the output, and
every other layer's output must be taken by some later layer.

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

from dataclasses import dataclass

from cnnlab.config.fields import Field, check_fields, closest, optional, shape, show, string
from cnnlab.errors import ConfigError
from cnnlab.model.blocks import LAYER_NAME, aliases, expand
from cnnlab.model.initializers import check_init_group, describe, layer_seed, make_initializer
from cnnlab.model.layers import LayerKind, layer_kind

MODEL_FIELDS = {
    "name": Field(string),
    "input_shape": Field(shape),
    "description": Field(optional(string), None),
    "blocks": Field(lambda v, p: v, None),
    "layers": Field(lambda v, p: v),
}


@dataclass
class Row:
    name: str
    kind: LayerKind
    args: dict
    output_shape: tuple
    params: int
    kernel_init: dict | None  # resolved init spec, None for layers without weights
    bias_init: dict | None
    inputs: tuple[str, ...] = ()  # the layers it takes ('input': the model's input), in order


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

    @property
    def is_chain(self) -> bool:
        """True for a plain stack: every layer takes the one before it."""
        previous = "input"
        for r in self.rows:
            if r.inputs not in ((), (previous,)):
                return False
            previous = r.name
        return True


def _resolve_inputs(e, defined: dict, aliases: dict, later: set, removed: set, previous: str) -> list[str]:
    """The names of the layers `e` takes; an unknown, later or removed one is a ConfigError at `<layer>.inputs`."""
    if e.inputs is None:
        return [previous]
    out = []
    name = e.owner or e.name
    shown = f"{show(e.inputs)}: " if len(e.inputs) > 1 and not e.owner else ""  # the list as written
    for w in e.inputs:
        target = aliases.get(w, w)
        if target == "input" or target in defined:
            out.append(target)
            continue
        where = e.inputs_path or f"{e.path}.inputs"
        if w == name:
            raise ConfigError(where, f"{shown}{name!r} cannot take its own output: an input must be a layer "
                                     "defined earlier")
        if w in later or target in later:
            raise ConfigError(where, f"{shown}{w!r} is defined after {name!r}: an input must be a layer defined "
                                     "earlier in the mapping (no cycles)")
        if w in removed:
            raise ConfigError(where, f"{shown}{w!r} was removed (null), so {name!r} cannot take it")
        known = [*defined, *(a for a, t in aliases.items() if t in defined)]
        raise ConfigError(where, f"{shown}{w!r} is not a layer of the model{closest(w, known)}")
    return out


def check_model(model_cfg, init_cfg, path: str = "model", init_path: str = "init") -> Architecture:
    """Validate a layer graph and compute its shape table. Raises ConfigError."""
    model = check_fields(model_cfg, MODEL_FIELDS, path)
    roles = check_init_group(init_cfg, init_path)
    layers = model["layers"]
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{path}.layers",
                          f"expected a non-empty mapping of layer names to layers, got {show(layers)}")

    entries = expand(layers, model["blocks"], f"{path}.layers")
    alias = aliases(entries)
    removed = {e.name for e in entries if e.values is None}
    names = [e.name for e in entries if e.values is not None]
    taken = set()
    for e in entries:
        if e.values is None:
            continue
        if e.name in taken or (e.name in alias and not e.block):
            raise ConfigError(e.path, f"the name {e.name!r} is used twice (a block instance's layers are named "
                                      "<instance>_<layer>); rename one")
        taken.add(e.name)

    rows: list[Row] = []
    shapes: dict[str, tuple] = {"input": model["input_shape"]}
    padding_layers: set[str] = set()
    previous = "input"
    for index, e in enumerate(entries):
        name, values, layer_path = e.name, e.values, e.path
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
        later = set(names[names.index(name):]) | {a for a, t in alias.items() if t in names[names.index(name):]}
        inputs = _resolve_inputs(e, shapes, alias, later, removed, previous)
        sources = ["the input" if i == "input" else i for i in inputs]
        if kind.merges:
            if len(inputs) < 2:
                raise ConfigError(f"{layer_path}.inputs", f"{kind.name} joins two or more layers: list them, "
                                                          f"e.g. inputs: [{previous}, <another layer>]")
            shape_in = [shapes[i] for i in inputs]
            try:
                kind.check_inputs(shape_in, layer_path, sources)
            except ConfigError as err:  # lead with the value as written: `inputs: [a, b]`
                raise ConfigError(err.path, f"{show(e.inputs)}: {err.message}") from None
        else:
            if len(inputs) != 1:
                raise ConfigError(f"{layer_path}.inputs", f"{kind.name} takes one input but gets {len(inputs)} "
                                                          f"({', '.join(inputs)}): join them first with add or concat")
            shape_in = shapes[inputs[0]]
            kind.check_input(shape_in, layer_path, sources[0])
        shape_out = kind.output_shape(shape_in, args, layer_path)
        rows.append(Row(name, kind, args, shape_out, kind.param_count(shape_in, args), None, None, tuple(inputs)))
        if isinstance(args.get("padding"), tuple):  # explicit padding adds a ZeroPadding2D named <name>_pad
            padding_layers.add(f"{name}_pad")
        shapes[name] = shape_out
        previous = name

    if not rows:
        raise ConfigError(f"{path}.layers", "every layer is null: the model has no layers")
    for r in rows:
        if r.name in padding_layers:
            raise ConfigError(f"{path}.layers.{r.name}",
                              f"the name {r.name!r} is taken by the ZeroPadding2D of {r.name[:-4]}'s explicit padding")
    used = {i for r in rows for i in r.inputs}
    paths = {e.name: e.path for e in entries}
    for r in rows[:-1]:
        if r.name not in used:
            raise ConfigError(paths[r.name], f"the output of {r.name!r} is used by no later layer (the model's output "
                                             f"is its last layer, {rows[-1].name!r}): take it in a later layer's "
                                             "inputs, or remove it")
    weighted = [r for r in rows if r.kind.has_kernel]
    for r in weighted:
        r.kernel_init = r.args["init"] or roles["output" if r is weighted[-1] else "hidden"]
        if r.args["use_bias"]:
            r.bias_init = r.args["bias_init"] or roles["bias"]
    return Architecture(model["name"], model["input_shape"], rows)


def _fmt_shape(s: tuple) -> str:
    return "(None, " + ", ".join(str(d) for d in s) + ")"


def shape_table(arch: Architecture) -> str:
    """The per-layer table printed by dry runs and logged with every run; `inputs` names what each layer takes."""
    head = ("layer", "type", "inputs", "output shape", "params", "init (kernel / bias)")
    body = []
    for r in arch.rows:
        init = ""
        if r.kernel_init:
            init = describe(r.kernel_init) + (" / " + describe(r.bias_init) if r.bias_init else " / no bias")
        body.append((r.name, r.kind.name, ", ".join(r.inputs), _fmt_shape(r.output_shape), f"{r.params:,}", init))
    rows = [("input", "", "", _fmt_shape(arch.input_shape), "", ""), *body]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w) if i == 4 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(head))
    total = f"Total params: {arch.total_params:,}   output: {_fmt_shape(arch.output_shape)}"
    return "\n".join([f"Model: {arch.name}", line(head), rule, *map(line, rows), rule, total])


def build_model(arch: Architecture, seed: int):
    """Make the `keras.Model` (functional API); each weighted layer gets its own seeded initializer instances.

    Seeds follow a layer's position in the table, so a plain stack builds the same weights it always did.
    """
    from cnnlab.backend import keras

    inputs = keras.Input(shape=arch.input_shape, name="input")
    tensors = {"input": inputs}
    for position, r in enumerate(arch.rows):
        kernel = None
        if r.kernel_init:
            made = [make_initializer(r.kernel_init, layer_seed(seed, position, s)) for s in r.kind.kernel_slots]
            kernel = made[0] if len(made) == 1 else tuple(made)
        bias = make_initializer(r.bias_init, layer_seed(seed, position, 1)) if r.bias_init else None
        x = [tensors[i] for i in r.inputs] if r.kind.merges else tensors[r.inputs[0]]
        for layer in r.kind.build(r.name, r.args, kernel, bias):
            if r is arch.rows[-1]:
                layer.dtype_policy = "float32"  # under mixed precision the logits and loss stay float32
            x = layer(x)
        tensors[r.name] = x
    return keras.Model(inputs, tensors[arch.rows[-1].name], name=arch.name)


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
