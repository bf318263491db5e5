"""Networks as graphs: `inputs:` by name, merging kinds, blocks, the graph presets and the one-line graph errors.

The presets are checked against networks written by hand with the Keras functional API: the same parameter
count and the same output shape at every layer.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.model.blocks import expand
from cnnlab.model.builder import build_model, check_model, shape_table, verify_model
from cnnlab.model.initializers import layer_seed, make_initializer
from cnnlab.model.memory import estimate
from cnnlab.schema import check_config

INIT = {"hidden": {"scheme": "he_normal"}, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "zeros"}}


@pytest.fixture(scope="module")
def keras():
    from cnnlab.backend import keras

    return keras


def preset(name: str, input_shape, num_classes: int = 10):
    """A shipped model file, its `${dataset.…}` resolved for a data set of `input_shape` images."""
    both = OmegaConf.create({"model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"),
                             "dataset": {"input_shape": list(input_shape), "num_classes": num_classes}})
    return check_model(OmegaConf.to_container(both, resolve=True)["model"], INIT)


def arch_of(layers: dict, input_shape=(8, 8, 3), blocks=None):
    cfg = {"name": "g", "input_shape": list(input_shape), "layers": layers}
    if blocks is not None:
        cfg["blocks"] = blocks
    return check_model(cfg, INIT)


def assert_same_network(arch, model, reference):
    """Equal parameter counts, and every cnnlab layer's output shape equals the hand-written model's layer's."""
    assert arch.total_params == model.count_params() == reference.count_params()
    for row in arch.rows:
        ref = reference.get_layer(row.name)
        assert (row.name, tuple(ref.output.shape)) == (row.name, (None, *row.output_shape))
        assert (row.name, ref.count_params()) == (row.name, row.params)
    assert len([la for la in reference.layers if la.name != "input"]) == len(arch.rows)
    verify_model(arch, model)


# --- hand-written references ------------------------------------------------------------------------------------


def hand_resnet(keras, input_shape, stem: int, stages: list[list[tuple[str, int, int]]], name: str):
    """conv-BN-ReLU stem, then basic blocks (prefix, filters, strides); a 1×1 projection where strides > 1."""
    L = keras.layers
    inp = keras.Input(input_shape, name="input")
    x = L.Conv2D(stem, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    for stage in stages:
        for p, f, s in stage:
            y = L.Conv2D(f, 3, strides=s, padding="same", use_bias=False, name=f"{p}_conv1")(x)
            y = L.BatchNormalization(momentum=0.9, name=f"{p}_bn1")(y)
            y = L.Activation("relu", name=f"{p}_relu1")(y)
            y = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            y = L.BatchNormalization(momentum=0.9, name=f"{p}_bn2")(y)
            if s > 1:
                x = L.Conv2D(f, 1, strides=s, use_bias=False, name=f"{p}_proj")(x)
                x = L.BatchNormalization(momentum=0.9, name=f"{p}_proj_bn")(x)
            x = L.Add(name=f"{p}_add")([y, x])
            x = L.Activation("relu", name=f"{p}_relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=name)


def test_resnet20_equals_a_hand_written_keras_resnet20(keras):
    arch = preset("resnet20", (32, 32, 3))
    stages = [[(f"s{i}b{j}", f, 2 if (i > 1 and j == 1) else 1) for j in (1, 2, 3)]
              for i, f in ((1, 16), (2, 32), (3, 64))]
    reference = hand_resnet(keras, (32, 32, 3), 16, stages, "resnet20")
    assert_same_network(arch, build_model(arch, seed=0), reference)
    assert arch.total_params == 274_042  # option B shortcuts; 272,474 trained + 1,568 batch-norm moving statistics
    trained = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
    assert trained == 272_474
    assert sum(r.kind.name == "conv2d" for r in arch.rows) == 19 + 2  # 19 + the dense = 20 layers; 2 projections
    assert arch.output_shape == (10,)


def test_resmnist_equals_a_hand_written_keras_network(keras):
    arch = preset("resmnist", (28, 28, 1))
    stages = [[("b1", 32, 1)], [("b2", 64, 2)], [("b3", 128, 2)]]
    reference = hand_resnet(keras, (28, 28, 1), 32, stages, "resmnist")
    assert_same_network(arch, build_model(arch, seed=0), reference)
    assert arch.total_params == 309_418


def test_sepnet_equals_a_hand_written_keras_network(keras):
    L = keras.layers
    arch = preset("sepnet", (28, 28, 1))
    inp = keras.Input((28, 28, 1), name="input")
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="stem")(inp)
    for i, (f, pool) in enumerate(((16, "pool1"), (32, "pool2")), 1):
        p = f"mixed{i}"
        b1 = L.Conv2D(f, 1, activation="relu", name=f"{p}_b1")(x)
        b3 = L.SeparableConv2D(f, 3, padding="same", activation="relu", name=f"{p}_b3")(x)
        b5 = L.SeparableConv2D(f, 5, padding="same", activation="relu", name=f"{p}_b5")(x)
        bp = L.MaxPooling2D(3, strides=1, padding="same", name=f"{p}_pool")(x)
        bp = L.Conv2D(f, 1, activation="relu", name=f"{p}_pool_proj")(bp)
        x = L.Concatenate(name=f"{p}_cat")([b1, b3, b5, bp])
        x = L.MaxPooling2D(2, name=pool)(x)
    x = L.SeparableConv2D(128, 3, padding="same", activation="relu", name="sep")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    reference = keras.Model(inp, L.Dense(10, name="logits")(x))
    assert_same_network(arch, build_model(arch, seed=0), reference)
    assert arch.total_params == 32_970
    assert {r.kind.name for r in arch.rows} >= {"concat", "separable_conv2d"}


# --- plain stacks build exactly what they built before ----------------------------------------------------------


def test_a_stack_builds_the_same_weights_as_the_sequential_builder(keras):
    """The graph builder gives a plain stack the same layers, seeds and so the same weights and outputs."""
    both = OmegaConf.create({"model": OmegaConf.load(CONF_DIR / "model" / "lenet5.yaml"),
                             "dataset": {"input_shape": [28, 28, 1], "num_classes": 10}})
    arch = check_model(OmegaConf.to_container(both, resolve=True)["model"], INIT)
    assert arch.is_chain and all(len(r.inputs) == 1 for r in arch.rows)
    model = build_model(arch, seed=7)

    x = inputs = keras.Input(arch.input_shape, name="input")  # the builder as it was: one layer after another
    for position, r in enumerate(arch.rows):
        kernel = make_initializer(r.kernel_init, layer_seed(7, position, 0)) if r.kernel_init else None
        bias = make_initializer(r.bias_init, layer_seed(7, position, 1)) if r.bias_init else None
        for layer in r.kind.build(r.name, r.args, kernel, bias):
            x = layer(x)
    before = keras.Model(inputs, x)
    assert [w.name for w in model.weights] == [w.name for w in before.weights]
    for a, b in zip(model.get_weights(), before.get_weights()):
        np.testing.assert_array_equal(a, b)
    image = np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(image)), keras.ops.convert_to_numpy(before(image)))


def test_layer_seed_slots_0_and_1_are_unchanged_and_2_is_apart():
    assert layer_seed(3, 5, 0) == (3 * 1_000_003 + 10) % (2**31 - 1)
    assert layer_seed(3, 5, 1) == (3 * 1_000_003 + 11) % (2**31 - 1)
    near = {layer_seed(3, p, s) for p in range(200) for s in (0, 1)}
    assert all(layer_seed(3, p, 2) not in near for p in range(200))


# --- graph syntax ----------------------------------------------------------------------------------------------


RESIDUAL = {
    "conv1": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
    "conv2": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
    "short": {"type": "conv2d", "filters": 4, "kernel_size": 1, "inputs": "input"},
    "add": {"type": "add", "inputs": ["conv2", "short"]},
    "gate": {"type": "multiply", "inputs": ["add", "conv1"]},
    "cat": {"type": "concat", "inputs": ["gate", "input"]},
    "gap": {"type": "global_avg_pool"},
    "logits": {"type": "dense", "units": 3},
}


def test_inputs_by_name_build_a_graph(keras):
    arch = arch_of(RESIDUAL)
    rows = {r.name: r for r in arch.rows}
    assert rows["conv2"].inputs == ("conv1",) and rows["short"].inputs == ("input",)
    assert rows["add"].inputs == ("conv2", "short") and rows["cat"].output_shape == (8, 8, 7)
    assert not arch.is_chain
    table = shape_table(arch)
    assert "inputs" in table.splitlines()[1]
    assert [line for line in table.splitlines() if line.startswith("add ")][0].split()[2:4] == ["conv2,", "short"]
    model = build_model(arch, seed=0)
    verify_model(arch, model)
    est = estimate(arch, batch_size=2)  # the memory guard sees every layer of the graph
    assert set(est.layers) == {"input", *rows}


def test_init_diagnostics_follow_the_graph(keras):
    from cnnlab.run.diagnostics import init_diagnostics

    arch = arch_of(RESIDUAL)
    model = build_model(arch, seed=0)
    x = np.random.default_rng(1).random((4, 8, 8, 3), dtype="float32")
    diag = init_diagnostics(model, x, np.array([0, 1, 2, 0]), from_logits=True)
    assert {d["name"] for d in diag["layers"]} == {r.name for r in arch.rows}
    out = keras.ops.convert_to_numpy(model(x, training=False))
    logits = [d for d in diag["layers"] if d["name"] == "logits"][0]
    assert logits["act_std"] == pytest.approx(float(out.std()), rel=1e-5)


# --- the five graph errors: one line naming the layer -------------------------------------------------------------

BAD_GRAPHS = {
    "unknown_input": ({"add": {"type": "add", "inputs": ["conv2", "shrot"]}},
                      "model.layers.add.inputs", "'shrot' is not a layer of the model; did you mean 'short'?"),
    "later_input": ({"conv2": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same",
                               "inputs": "add"}},
                    "model.layers.conv2.inputs", "'add' is defined after 'conv2'"),
    "add_mismatch": ({"short": {"type": "conv2d", "filters": 5, "kernel_size": 1, "inputs": "input"}},
                     "model.layers.add.inputs",
                     "add needs inputs of one shape but conv2 gives (None, 8, 8, 4) and short gives (None, 8, 8, 5)"),
    "concat_mismatch": ({"cat": {"type": "concat", "inputs": ["gate", "pooled"]},
                         "pooled": {"type": "max_pool", "inputs": "input"}},
                        "model.layers.cat.inputs",
                        "concat needs inputs of one spatial size but gate gives (None, 8, 8, 4) "
                        "and pooled gives (None, 4, 4, 3)"),
    "unused_branch": ({"short": {"type": "conv2d", "filters": 4, "kernel_size": 1, "inputs": "input"},
                       "add": {"type": "add", "inputs": ["conv2", "conv1"]}},
                      "model.layers.short", "the output of 'short' is used by no later layer"),
}


@pytest.mark.parametrize("case", BAD_GRAPHS)
def test_bad_graphs_are_one_line_naming_the_layer(case):
    change, path, message = BAD_GRAPHS[case]
    layers = dict(RESIDUAL)
    if case == "concat_mismatch":  # `pooled` must come before `cat` in the mapping
        layers = {k: v for k, v in layers.items() if k != "cat"}
        layers = {**{k: layers[k] for k in list(layers)[:5]}, "pooled": change["pooled"], "cat": change["cat"],
                  **{k: layers[k] for k in list(layers)[5:]}}
    else:
        layers.update(change)
    with pytest.raises(ConfigError) as err:
        arch_of(layers)
    assert err.value.path == path
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "layers,path,message",
    [
        ({"c": {"type": "conv2d", "filters": 2, "kernel_size": 1, "inputs": "c"}}, "model.layers.c.inputs",
         "cannot take its own output"),
        ({"c": {"type": "conv2d", "filters": 2, "kernel_size": 1}, "a": {"type": "add", "inputs": "c"}},
         "model.layers.a.inputs", "add joins two or more layers"),
        ({"c": {"type": "conv2d", "filters": 3, "kernel_size": 1},
          "d": {"type": "conv2d", "filters": 2, "kernel_size": 1, "inputs": ["c", "input"]}},
         "model.layers.d.inputs", "conv2d takes one input but gets 2 (c, input)"),
        ({"c": {"type": "conv2d", "filters": 2, "kernel_size": 1, "inputs": 3}}, "model.layers.c.inputs",
         "expected a layer name or a non-empty list"),
        ({"c": {"type": "conv2d", "filters": 2, "kernel_size": 1}, "d": None,
          "e": {"type": "flatten", "inputs": "d"}}, "model.layers.e.inputs", "'d' was removed (null)"),
    ],
    ids=["self", "add_of_one", "two_into_conv", "not_a_name", "removed"],
)
def test_more_graph_errors(layers, path, message):
    with pytest.raises(ConfigError) as err:
        arch_of(layers)
    assert err.value.path == path and message in str(err.value)


# --- blocks ---------------------------------------------------------------------------------------------------------

BLOCKS = {
    "res": {
        "params": {"filters": None, "kernel": 3},
        "layers": {
            "conv": {"type": "conv2d", "filters": "$filters", "kernel_size": "$kernel", "padding": "same"},
            "add": {"type": "add", "inputs": ["conv", "input"]},
        },
    }
}


def test_a_block_expands_in_place_and_its_instance_name_is_its_output():
    layers = {
        "stem": {"type": "conv2d", "filters": 4, "kernel_size": 1},
        "r1": {"type": "block", "block": "res", "filters": 4},
        "r2": {"type": "block", "block": "res", "filters": 4, "kernel": 1},
        "cat": {"type": "concat", "inputs": ["r1", "r2"]},
        "flat": {"type": "flatten"},
    }
    arch = arch_of(layers, blocks=BLOCKS)
    rows = {r.name: r for r in arch.rows}
    assert [r.name for r in arch.rows] == ["stem", "r1_conv", "r1_add", "r2_conv", "r2_add", "cat", "flat"]
    assert rows["r1_conv"].inputs == ("stem",) and rows["r1_add"].inputs == ("r1_conv", "stem")
    assert rows["r2_add"].inputs == ("r2_conv", "r1_add") and rows["cat"].inputs == ("r1_add", "r2_add")
    assert rows["r1_conv"].args["kernel_size"] == (3, 3) and rows["r2_conv"].args["kernel_size"] == (1, 1)


@pytest.mark.parametrize(
    "instance,path,message",
    [
        ({"filters": 4, "filter": 2}, "model.layers.r.filter",
         "not a parameter of block 'res'; did you mean 'filters'?"),
        ({}, "model.layers.r.filters", "is required but missing (a parameter of block 'res')"),
        ({"filters": 4, "block": "rse"}, "model.layers.r.block", "unknown block 'rse'; did you mean 'res'?"),
        ({"filters": 5}, "model.layers.r_add.inputs",
         "add needs inputs of one shape but r_conv gives (None, 8, 8, 5) and stem gives (None, 8, 8, 4)"),
        ({"filters": 4, "inputs": "flat"}, "model.layers.r.inputs", "'flat' is defined after 'r'"),
    ],
    ids=["unknown_param", "missing_param", "unknown_block", "mismatch_inside", "later_instance_input"],
)
def test_block_errors_name_the_instance_or_expanded_layer(instance, path, message):
    layers = {"stem": {"type": "conv2d", "filters": 4, "kernel_size": 1},
              "r": {"type": "block", "block": "res", **instance}, "flat": {"type": "flatten"}}
    with pytest.raises(ConfigError) as err:
        arch_of(layers, blocks=BLOCKS)
    assert err.value.path == path and message in str(err.value)


def test_block_definition_errors():
    bad = {"res": {"params": {"filters": 4}, "layers": {
        "conv": {"type": "conv2d", "filters": "$filtres", "kernel_size": 1},
        "add": {"type": "add", "inputs": ["conv", "inptu"]}}}}
    with pytest.raises(ConfigError) as err:
        expand({"r": {"type": "block", "block": "res"}}, bad)
    assert err.value.path == "model.blocks.res.layers.conv.filters"
    assert "'$filtres' is not a parameter of block 'res'; did you mean '$filters'?" in str(err.value)
    bad["res"]["layers"]["conv"]["filters"] = "$filters"
    with pytest.raises(ConfigError) as err:
        expand({"r": {"type": "block", "block": "res"}}, bad)
    assert err.value.path == "model.blocks.res.layers.add.inputs" and "did you mean 'input'?" in str(err.value)


def test_a_patch_changes_one_expanded_layer():
    layers = {"stem": {"type": "conv2d", "filters": 4, "kernel_size": 1},
              "r": {"type": "block", "block": "res", "filters": 4}, "flat": {"type": "flatten"},
              "r_conv": {"kernel_size": 5, "dilation_rate": 1}}
    rows = {r.name: r for r in arch_of(layers, blocks=BLOCKS).rows}
    assert rows["r_conv"].args["kernel_size"] == (5, 5) and rows["r_conv"].params == 5 * 5 * 4 * 4 + 4
    layers["r_cnv"] = {"kernel_size": 5}
    del layers["r_conv"]
    with pytest.raises(ConfigError) as err:
        arch_of(layers, blocks=BLOCKS)
    assert err.value.path == "model.layers.r_cnv.type" and "did you mean the block layer 'r_conv'?" in str(err.value)


# --- from the command line (Hydra composes, OmegaConf interpolates) ------------------------------------------------


def test_resnet20_overrides_through_hydra(compose):
    base = ("model=resnet20", "dataset=synthetic", "dataset.input_shape=[32,32,3]")
    run = check_config(compose(*base))
    assert run.arch.total_params == 274_042 and run.arch.output_shape == (10,)  # `${dataset.num_classes}` resolved

    run = check_config(compose(*base, "model.layers.s3b1.strides=1", "+model.layers.s1b2_conv1.kernel_size=5",
                               "dataset.num_classes=7"))
    rows = {r.name: r for r in run.arch.rows}
    assert rows["s3b3_relu2"].output_shape == (16, 16, 64)  # the instance parameter
    assert rows["s1b2_conv1"].params == 5 * 5 * 16 * 16 and rows["s1b1_conv1"].params == 3 * 3 * 16 * 16  # the patch
    assert rows["logits"].output_shape == (7,)

    with pytest.raises(ConfigError) as err:
        check_config(compose(*base, "model.layers.s2b2.filters=48"))
    assert err.value.path == "model.layers.s2b2_add.inputs"
    assert "s2b2_bn2 gives (None, 16, 16, 48) and s2b1_relu2 gives (None, 16, 16, 32)" in err.value.message


def test_a_graph_trains_end_to_end(compose, tmp_path):
    """A residual net with a separable branch and a concat goes through the whole run (init diagnostics included)."""
    from cnnlab.run.train import train

    net = """\
name: smallres
input_shape: ${dataset.input_shape}
blocks:
  res:
    params: {filters: null}
    layers:
      conv: {type: conv2d, filters: $filters, kernel_size: 3, padding: same, activation: relu}
      sep: {type: separable_conv2d, filters: $filters, kernel_size: 3, padding: same}
      add: {type: add, inputs: [sep, input]}
layers:
  stem: {type: conv2d, filters: 8, kernel_size: 3, strides: 2, padding: same, activation: relu}
  r1: {type: block, block: res, filters: 8}
  side: {type: max_pool, pool_size: 2, padding: same, inputs: stem}
  down: {type: avg_pool, pool_size: 2, padding: same, inputs: r1}
  cat: {type: concat, inputs: [down, side]}
  bn: {type: batch_norm}
  gap: {type: global_avg_pool}
  logits: {type: dense, units: "${dataset.num_classes}"}
"""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "smallres.yaml").write_text(net)
    run = check_config(compose(f"hydra.searchpath=[file://{tmp_path}]", "model=smallres", "dataset=synthetic",
                               "dataset.train_size=256", "dataset.val_size=64", "dataset.test_size=64",
                               "optimizer=adam", "trainer.steps=4", "trainer.eval_every=2", "trainer.verbose=0",
                               "tracking=none"))
    assert [r.name for r in run.arch.rows][:4] == ["stem", "r1_conv", "r1_sep", "r1_add"]
    result = train(run)
    assert result["steps"] == 4 and 0 <= result["test_accuracy"] <= 1


def test_cli_dry_run_of_resnet20_needs_no_data_file(tmp_path):
    """`python run.py model=resnet20 dataset=cifar10 dry_run=true` prints the graph's table with no CIFAR-10 file."""
    from conftest import run_cli

    empty = tmp_path / "no_data"
    empty.mkdir()
    p = run_cli("model=resnet20", "dataset=cifar10", "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=300,
                env={"CNNLAB_DATA_DIR": str(empty)})
    assert p.returncode == 0, p.stderr[-2000:]
    table = shape_table(preset("resnet20", (32, 32, 3)))
    assert table in p.stdout  # the whole table, inputs column included
    assert "s2b1_add      add              s2b1_bn2, s2b1_proj_bn  (None, 16, 16, 32)" in p.stdout
    assert "Total params: 274,042   output: (None, 10)" in p.stdout
    assert "built the same model: 274,042 parameters, output (None, 10)" in p.stdout
