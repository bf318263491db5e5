"""Blocks: a small graph written once in a model file (`blocks:`) and used many times in `layers:`.

A block has `params` (name → default; `null` = required) and a `layers` mapping like a
model's, where a value written `$name` is replaced by the instance's parameter. Inside a
block, `inputs` name the block's own layers, and `input` is the block's input.

    blocks:
      basic:
        params: {filters: null, strides: 1}
        layers:
          conv1: {type: conv2d, filters: $filters, kernel_size: 3, strides: $strides, padding: same}
          relu1: {type: activation, activation: relu}
          conv2: {type: conv2d, filters: $filters, kernel_size: 3, padding: same}
          add:   {type: add, inputs: [conv2, input]}
    layers:
      stem:   {type: conv2d, filters: 16, kernel_size: 3, padding: same}
      stage1: {type: block, block: basic, filters: 16}      # → stage1_conv1, stage1_relu1, stage1_conv2, stage1_add

An instance `<inst>` expands, in place, to layers named `<inst>_<layer>` (underscore:
Keras's torch backend refuses dots in layer names, and a dot would read as nesting in
a Hydra override). A later layer that names `<inst>` (or follows it) takes the block's
last layer. Overrides from the command line:

- an instance's parameter: `model.layers.stage1.filters=32` (it is a key of the file);
- one expanded layer: `+model.layers.stage1_conv1.kernel_size=5` (`+`: the key is new to
  the file) — an entry without `type` that names an expanded layer patches its arguments.

Placeholders are `$name`, not `${name}`: OmegaConf resolves `${...}` when the config is
composed (against the whole config: `${dataset.num_classes}` works in a block too), and
leaves `$name` alone for the expander.

Example:
    >>> entries = expand({"a": {"type": "block", "block": "b", "units": 4}}, {"b": {
    ...     "params": {"units": None}, "layers": {"fc": {"type": "dense", "units": "$units"}}}})
    >>> [(e.name, e.values, e.inputs) for e in entries]
    [('a_fc', {'type': 'dense', 'units': 4}, ['input'])]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnnlab.config.fields import closest, show
from cnnlab.errors import ConfigError

LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
PLACEHOLDER = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
INSTANCE_KEYS = ("type", "block", "inputs")


@dataclass
class Entry:
    """One layer of the expanded mapping, in order."""

    name: str
    values: dict | None  # the layer's config without `inputs`; None: removed (`model.layers.x=null`)
    inputs: list[str] | None  # names as written (None: the layer before it); inside a block: already resolved
    path: str  # where errors about it point
    block: str | None = None  # the instance it comes from
    inputs_path: str | None = None  # where errors about its inputs point, when not `<path>.inputs`
    owner: str | None = None  # the name errors about its inputs give (a block instance), when not `name`


def input_names(v, path: str) -> list[str] | None:
    """`inputs: a` or `inputs: [a, b]` → ['a'] / ['a', 'b']; absent → None."""
    if v is None:
        return None
    names = [v] if isinstance(v, str) else v
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(path, f"expected a layer name or a non-empty list of layer names, got {show(v)}")
    return list(names)


def _check_name(name, path: str) -> None:
    if not isinstance(name, str) or not LAYER_NAME.match(name):
        raise ConfigError(path, "a layer name must start with a letter and hold only letters, digits and _")


def check_blocks(blocks, path: str) -> dict:
    """Validate the `blocks:` mapping (shape only; the layers are checked where they are used)."""
    if blocks is None:
        return {}
    if not isinstance(blocks, dict):
        raise ConfigError(path, f"expected a mapping of block names to blocks, got {show(blocks)}")
    out = {}
    for name, block in blocks.items():
        bpath = f"{path}.{name}"
        _check_name(name, bpath)
        if not isinstance(block, dict):
            raise ConfigError(bpath, f"expected a mapping with 'params' and 'layers', got {show(block)}")
        for key in block:
            if key not in ("params", "layers", "description"):
                hint = closest(key, ["params", "layers"])
                raise ConfigError(f"{bpath}.{key}", f"unknown key{hint} (known: params, layers, description)")
        params = block.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{bpath}.params",
                              f"expected a mapping of parameter names to defaults, got {show(params)}")
        for p in params:
            if p in INSTANCE_KEYS:
                raise ConfigError(f"{bpath}.params.{p}", f"{p!r} is taken by the instance itself; rename the parameter")
        layers = block.get("layers")
        if not isinstance(layers, dict) or not layers:
            raise ConfigError(f"{bpath}.layers",
                              f"expected a non-empty mapping of layer names to layers, got {show(layers)}")
        for lname, values in layers.items():
            lpath = f"{bpath}.layers.{lname}"
            _check_name(lname, lpath)
            if lname == "input":
                raise ConfigError(lpath, "inside a block 'input' is the block's input; rename the layer")
            if not isinstance(values, dict):
                raise ConfigError(lpath, f"expected a mapping such as {{type: conv2d, ...}}, got {show(values)}")
            if values.get("type") == "block":
                raise ConfigError(f"{lpath}.type", "a block cannot use another block; write its layers out")
        out[name] = {"params": params, "layers": layers}
    return out


def _substitute(value, params: dict, block: str, path: str):
    """Replace every `$name` string (a whole value) by the parameter's value, through lists and mappings."""
    if isinstance(value, str):
        m = PLACEHOLDER.match(value)
        if not m:
            return value
        if m.group(1) not in params:
            known = ", ".join(params) or "none"
            raise ConfigError(path, f"{value!r} is not a parameter of block {block!r}"
                                    f"{_did_you_mean_param(m.group(1), params)} (params: {known})")
        return params[m.group(1)]
    if isinstance(value, list):
        return [_substitute(v, params, block, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, params, block, f"{path}.{k}") for k, v in value.items()}
    return value


def _did_you_mean_param(word: str, params: dict) -> str:
    hint = closest(word, params)
    return hint.replace("mean '", "mean '$") if hint else ""


def _instance(name: str, values: dict, blocks: dict, previous: str, path: str) -> list[Entry]:
    """The entries of one block instance `name: {type: block, block: <b>, <params>...}`."""
    ipath = f"{path}.{name}"
    bname = values.get("block")
    if bname is None:
        raise ConfigError(f"{ipath}.block", "is required but missing: the name of a block under model.blocks")
    if not isinstance(bname, str) or bname not in blocks:
        known = ", ".join(blocks) or "none: the model file defines no blocks"
        raise ConfigError(f"{ipath}.block", f"unknown block {show(bname)}{closest(bname, blocks)} (known: {known})")
    block = blocks[bname]
    params = dict(block["params"])
    for key, v in values.items():
        if key in INSTANCE_KEYS:
            continue
        if key not in params:
            known = ", ".join(params) or "none"
            raise ConfigError(f"{ipath}.{key}", f"not a parameter of block {bname!r}{closest(key, params)} "
                                                f"(params: {known})")
        params[key] = v
    for key, v in params.items():
        if v is None:
            raise ConfigError(f"{ipath}.{key}", f"is required but missing (a parameter of block {bname!r})")
    block_input = input_names(values.get("inputs"), f"{ipath}.inputs") or [previous]
    if len(block_input) != 1:
        raise ConfigError(f"{ipath}.inputs", f"a block takes one input, got {show(values.get('inputs'))}")

    bpath = f"model.blocks.{bname}.layers"
    entries, local = [], {}
    prev = block_input[0]
    for lname, lvalues in block["layers"].items():
        lpath = f"{bpath}.{lname}"
        wanted = input_names(lvalues.get("inputs"), f"{lpath}.inputs")
        if wanted is None:
            inputs = [prev]
        else:
            inputs = []
            for w in wanted:
                if w == "input":
                    inputs.append(block_input[0])
                elif w in local:
                    inputs.append(local[w])
                elif w in block["layers"]:
                    raise ConfigError(f"{lpath}.inputs", f"{w!r} is defined after {lname!r} in block {bname!r}: "
                                                         "an input must be a layer defined earlier (no cycles)")
                else:
                    raise ConfigError(f"{lpath}.inputs", f"{w!r} is not a layer of block {bname!r}"
                                                         f"{closest(w, [*local, 'input'])} (known: "
                                                         f"{', '.join(['input', *local])})")
        body = {k: v for k, v in lvalues.items() if k != "inputs"}
        body = _substitute(body, params, bname, lpath)
        full = f"{name}_{lname}"
        entry = Entry(full, body, inputs, f"{path}.{full}", block=name)
        if block_input[0] in inputs and "inputs" in values:  # an error about it is about the instance's `inputs`
            entry.inputs_path, entry.owner = f"{ipath}.inputs", name
        entries.append(entry)
        local[lname] = full
        prev = full
    return entries


def expand(layers: dict, blocks: dict | None, path: str = "model.layers") -> list[Entry]:
    """The `layers` mapping with every block instance written out and patches applied, in order."""
    blocks = check_blocks(blocks, path.rsplit(".", 1)[0] + ".blocks")
    entries: list[Entry] = []
    patches: dict[str, tuple[dict | None, str]] = {}
    previous = "input"
    for name, values in layers.items():
        lpath = f"{path}.{name}"
        if isinstance(values, dict) and "type" not in values and blocks:
            patches[name] = (values, lpath)  # resolved below: a patch of an expanded layer, or a missing type
            continue
        if isinstance(values, dict) and values.get("type") == "block":
            _check_name(name, lpath)
            made = _instance(name, values, blocks, previous, path)
            entries.extend(made)
            previous = made[-1].name
            continue
        if isinstance(values, dict):
            entries.append(Entry(name, {k: v for k, v in values.items() if k != "inputs"},
                                 input_names(values.get("inputs"), f"{lpath}.inputs"), lpath))
        else:
            entries.append(Entry(name, values, None, lpath))
        if values is not None:
            previous = name

    by_name = {e.name: e for e in entries if e.block}
    for name, (values, lpath) in patches.items():
        if name not in by_name:
            hint = closest(name, by_name)
            raise ConfigError(f"{lpath}.type", "is required but missing" + (
                hint.replace("mean '", "mean the block layer '") if hint else ""))
        for key in ("inputs", "type"):
            if key in values:
                raise ConfigError(f"{lpath}.{key}", f"a patch of block layer {name!r} may change its arguments, "
                                                    f"not its {key}: change the block instead")
        by_name[name].values = {**by_name[name].values, **values}
    return entries


def aliases(entries: list[Entry]) -> dict[str, str]:
    """Block instance name → its last layer (what a later layer that names the instance takes)."""
    out = {}
    for e in entries:
        if e.block:
            out[e.block] = e.name
    return out
