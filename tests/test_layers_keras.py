"""The pure-Python shape, padding and parameter rules of cnnlab.model.layers / cnnlab.model.builder agree with Keras.

cnnlab computes every layer's output shape and parameter count before tensorflow
is imported; these tests build the same layers in Keras (tiny tensors) and
compare shapes, parameter counts and output values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.model.builder import build_model, check_model, verify_model
from cnnlab.model.layers import LAYER_KINDS

INIT = {"hidden": {"scheme": "he_normal"}, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "zeros"}}


@pytest.fixture(scope="module")
def keras():
    from cnnlab.backend import keras

    return keras


def arch_of(layers: dict, input_shape, init=INIT):
    return check_model({"name": "t", "input_shape": list(input_shape), "layers": layers}, init)


def case_id(v) -> str:
    """(28, 31) → '28x31'; {'kernel_size': 3, 'strides': 2} → 'kernel_size=3,strides=2'."""
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return ",".join(f"{k}={v}" for k, v in v.items()).replace(" ", "")


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def tf_rule(n: int, k: int, s: int, d: int, padding: str) -> int:
    """TensorFlow's output size, written out independently of cnnlab.model.layers."""
    if padding == "same":
        return math.ceil(n / s)
    return (n - (d * (k - 1) + 1)) // s + 1


def np_conv(x, kernel, bias, strides=(1, 1), dilation=(1, 1)):
    """Plain 'valid' cross-correlation of one (H, W, C) image with a (kh, kw, C, F) kernel."""
    (kh, kw, _, f), (sh, sw), (dh, dw) = kernel.shape, strides, dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    oh, ow = (x.shape[0] - eh) // sh + 1, (x.shape[1] - ew) // sw + 1
    out = np.zeros((oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = x[i * sh : i * sh + eh : dh, j * sw : j * sw + ew : dw, :]
            out[i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    return out


# --- output shapes: cnnlab's table == TF's rule == the Keras model == a bare Keras layer --------------------------

# (input height, width), layer arguments; inputs are not square so a swapped axis shows
CONV_CASES = [
    ((28, 31), dict(kernel_size=3, strides=1, padding="same")),
    ((28, 31), dict(kernel_size=3, strides=2, padding="same")),
    ((27, 30), dict(kernel_size=3, strides=2, padding="same")),
    ((7, 9), dict(kernel_size=3, strides=3, padding="same")),
    ((5, 6), dict(kernel_size=4, strides=2, padding="same")),
    ((10, 11), dict(kernel_size=1, strides=3, padding="same")),
    ((6, 4), dict(kernel_size=5, strides=4, padding="same")),
    ((4, 3), dict(kernel_size=5, strides=1, padding="same")),  # kernel larger than the input is fine with SAME
    ((28, 31), dict(kernel_size=3, strides=1, padding="valid")),
    ((28, 31), dict(kernel_size=3, strides=2, padding="valid")),
    ((27, 30), dict(kernel_size=5, strides=2, padding="valid")),
    ((7, 8), dict(kernel_size=7, strides=1, padding="valid")),
    ((9, 12), dict(kernel_size=2, strides=3, padding="valid")),
    ((10, 13), dict(kernel_size=4, strides=4, padding="valid")),
    ((12, 9), dict(kernel_size=[3, 1], strides=[2, 1], padding="valid")),
    ((12, 9), dict(kernel_size=[1, 4], strides=[1, 3], padding="same")),
    ((28, 31), dict(kernel_size=3, dilation_rate=2, padding="same")),
    ((28, 31), dict(kernel_size=3, dilation_rate=2, padding="valid")),
    ((11, 14), dict(kernel_size=3, dilation_rate=3, padding="valid")),
    ((12, 13), dict(kernel_size=2, dilation_rate=4, padding="valid")),
    ((9, 10), dict(kernel_size=3, dilation_rate=4, padding="valid")),  # effective window 9 == input: 1×2
    ((10, 10), dict(kernel_size=3, dilation_rate=[1, 3], padding="valid")),
]

POOL_CASES = [
    ((28, 31), dict(pool_size=2)),  # strides default to pool_size, padding to valid
    ((27, 29), dict(pool_size=2)),
    ((28, 31), dict(pool_size=3, strides=2)),
    ((28, 31), dict(pool_size=3, strides=2, padding="same")),
    ((7, 9), dict(pool_size=2, padding="same")),
    ((7, 9), dict(pool_size=3, strides=1, padding="valid")),
    ((4, 5), dict(pool_size=5, strides=1, padding="same")),  # window larger than the input
    ((10, 12), dict(pool_size=[2, 3], strides=[1, 2])),
    ((10, 12), dict(pool_size=[3, 2], strides=[3, 1], padding="same")),
    ((9, 9), dict(pool_size=4, strides=3)),
]


def expected_hw(hw, args, window_key):
    k, s = pair(args[window_key]), pair(args.get("strides", args[window_key] if window_key == "pool_size" else 1))
    d = pair(args.get("dilation_rate", 1))
    pad = args.get("padding", "valid")
    return tuple(tf_rule(hw[a], k[a], s[a], d[a], pad) for a in (0, 1))


def keras_layer_for(keras, kind: str, args: dict):
    if kind == "conv2d":
        return keras.layers.Conv2D(3, **args)
    cls = keras.layers.MaxPooling2D if kind == "max_pool" else keras.layers.AveragePooling2D
    return cls(**args)


def check_shape_case(keras, kind, hw, args):
    window_key = "kernel_size" if kind == "conv2d" else "pool_size"
    layer_cfg = {"type": kind, **args, **({"filters": 3} if kind == "conv2d" else {})}
    arch = arch_of({"x": layer_cfg}, (*hw, 2))
    expected = (*expected_hw(hw, args, window_key), 3 if kind == "conv2d" else 2)

    assert arch.rows[0].output_shape == expected  # cnnlab's table follows TF's rule

    model = build_model(arch, seed=0)
    verify_model(arch, model)
    assert tuple(model.get_layer("x").output.shape) == (None, *expected)  # the Keras model agrees

    y = keras_layer_for(keras, kind, args)(np.zeros((1, *hw, 2), "float32"))  # and so does a bare layer
    assert tuple(y.shape) == (1, *expected)


@pytest.mark.parametrize("hw,args", CONV_CASES, ids=case_id)
def test_conv_output_shape_matches_keras(keras, hw, args):
    check_shape_case(keras, "conv2d", hw, args)


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("hw,args", POOL_CASES, ids=case_id)
def test_pool_output_shape_matches_keras(keras, kind, hw, args):
    check_shape_case(keras, kind, hw, args)


@pytest.mark.parametrize(
    "hw,args",
    [((7, 7), dict(kernel_size=9)), ((7, 9), dict(kernel_size=3, dilation_rate=4)), ((5, 5), dict(kernel_size=[2, 6]))],
)
def test_kernel_that_does_not_fit_is_rejected_by_cnnlab_and_by_keras(keras, hw, args):
    with pytest.raises(ConfigError) as err:
        arch_of({"conv": {"type": "conv2d", "filters": 3, **args}}, (*hw, 2))
    assert err.value.path == "model.layers.conv.kernel_size"
    assert f"{hw[0]}×{hw[1]} input" in str(err.value)
    with pytest.raises(ValueError, match="zero or negative"):
        keras.layers.Conv2D(3, **args)(np.zeros((1, *hw, 2), "float32"))


# --- explicit padding: same values as ZeroPadding2D + a 'valid' Conv2D, and as numpy ----------------------------

PADDINGS = [
    (1, ((1, 1), (1, 1))),
    ([2, 0], ((2, 2), (0, 0))),
    ([1, 2], ((1, 1), (2, 2))),
    ([[0, 2], [1, 0]], ((0, 2), (1, 0))),
    ([[2, 1], [0, 3]], ((2, 1), (0, 3))),
]


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding,explicit", PADDINGS, ids=[str(p[0]).replace(" ", "") for p in PADDINGS])
def test_explicit_padding_values(keras, padding, explicit, strides):
    layer = {
        "type": "conv2d", "filters": 2, "kernel_size": [3, 2], "strides": strides, "padding": padding,
        "bias_init": {"scheme": "normal", "stddev": 0.5},
    }
    arch = arch_of({"conv": layer}, (6, 7, 2))
    model = build_model(arch, seed=3)
    verify_model(arch, model)
    x = np.random.default_rng(0).normal(size=(1, 6, 7, 2)).astype("float32")
    got = np.asarray(model(x))

    kernel, bias = model.get_layer("conv").get_weights()
    assert np.any(bias != 0)  # the bias takes part in the comparison
    reference = keras.Sequential(
        [keras.Input((6, 7, 2)), keras.layers.ZeroPadding2D(explicit), keras.layers.Conv2D(2, (3, 2), strides=strides)]
    )
    reference.layers[-1].set_weights([kernel, bias])
    np.testing.assert_allclose(got, np.asarray(reference(x)), rtol=1e-5, atol=1e-5)

    padded = np.pad(x[0], (explicit[0], explicit[1], (0, 0)))
    np.testing.assert_allclose(got[0], np_conv(padded, kernel, bias, (strides, strides)), rtol=1e-4, atol=1e-4)
    assert got.shape[1:3] == arch.rows[0].output_shape[:2]


def test_dilated_conv_values_match_numpy(keras):
    arch = arch_of({"conv": {"type": "conv2d", "filters": 2, "kernel_size": 3, "dilation_rate": [2, 1]}}, (9, 8, 1))
    model = build_model(arch, seed=1)
    x = np.random.default_rng(1).normal(size=(1, 9, 8, 1)).astype("float32")
    kernel, bias = model.get_layer("conv").get_weights()
    np.testing.assert_allclose(np.asarray(model(x))[0], np_conv(x[0], kernel, bias, dilation=(2, 1)), atol=1e-4)


# --- SAME puts the odd pad row/column at the bottom/right ---------------------------------------------------------

ONES_NO_BIAS = {"init": {"scheme": "ones"}, "use_bias": False}


def run_layer(layer: dict, x: np.ndarray) -> np.ndarray:
    """Build a one-layer cnnlab model for input `x` (1, H, W, C) and return its output (H', W') for channel 0."""
    arch = arch_of({"x": layer}, x.shape[1:])
    model = build_model(arch, seed=0)
    verify_model(arch, model)
    out = np.asarray(model(x))
    assert out.shape[1:] == arch.rows[0].output_shape
    return out[0, :, :, 0]


ARANGE_4x4 = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)


def test_same_stride_2_on_even_input_pads_bottom_right(keras):
    # 4×4 input, 3×3 window, stride 2 → 2×2 output and one pad row/col in total, which TF puts bottom/right.
    got = run_layer({"type": "conv2d", "filters": 1, "kernel_size": 3, "strides": 2, "padding": "same", **ONES_NO_BIAS},
                    ARANGE_4x4)
    #  0  1  2  3      window sums: rows 0-2 × cols 0-2 = 45, rows 0-2 × cols 2-3 = 39,
    #  4  5  6  7                   rows 2-3 × cols 0-2 = 66, rows 2-3 × cols 2-3 = 50
    #  8  9 10 11      (with the pad top/left instead, the first sum would be 0+1+4+5 = 10)
    # 12 13 14 15
    np.testing.assert_array_equal(got, [[45, 39], [66, 50]])
    bottom_right = np.pad(ARANGE_4x4[0], ((0, 1), (0, 1), (0, 0)))
    np.testing.assert_array_equal(got, np_conv(bottom_right, np.ones((3, 3, 1, 1)), 0, (2, 2))[:, :, 0])


def test_same_even_kernel_pads_bottom_right(keras):
    x = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    got = run_layer({"type": "conv2d", "filters": 1, "kernel_size": 2, "padding": "same", **ONES_NO_BIAS}, x)
    np.testing.assert_array_equal(got, [[8, 12, 7], [20, 24, 13], [13, 15, 8]])


def test_same_on_non_square_input_pads_right_only_where_needed(keras):
    # 4×5 input, stride 2, 3×3: height needs 1 pad (bottom), width needs 2 (one each side).
    x = np.arange(20, dtype="float32").reshape(1, 4, 5, 1)
    got = run_layer({"type": "conv2d", "filters": 1, "kernel_size": 3, "strides": 2, "padding": "same", **ONES_NO_BIAS},
                    x)
    padded = np.pad(x[0], ((0, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(got, np_conv(padded, np.ones((3, 3, 1, 1)), 0, (2, 2))[:, :, 0])


# --- pooling values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer,expected",
    [
        ({"type": "max_pool", "pool_size": 2}, [[5, 7], [13, 15]]),
        ({"type": "avg_pool", "pool_size": 2}, [[2.5, 4.5], [10.5, 12.5]]),
        ({"type": "max_pool", "pool_size": 2, "strides": 1}, [[5, 6, 7], [9, 10, 11], [13, 14, 15]]),
        ({"type": "max_pool", "pool_size": 3, "strides": 2, "padding": "same"}, [[10, 11], [14, 15]]),
        # TF's SAME average leaves the padded cells out of the mean: 45/9, 39/6, 66/6, 50/4
        ({"type": "avg_pool", "pool_size": 3, "strides": 2, "padding": "same"}, [[5, 6.5], [11, 12.5]]),
        ({"type": "global_max_pool"}, None),
        ({"type": "global_avg_pool"}, None),
    ],
    ids=["max2", "avg2", "max2s1", "max3s2same", "avg3s2same", "gmax", "gavg"],
)
def test_pool_values(keras, layer, expected):
    arch = arch_of({"pool": layer, "flatten": {"type": "flatten"}}, (4, 4, 1))
    model = build_model(arch, seed=0)
    verify_model(arch, model)
    got = np.asarray(model(ARANGE_4x4))[0]
    if expected is None:
        expected = [15.0] if layer["type"] == "global_max_pool" else [7.5]
    np.testing.assert_allclose(got, np.ravel(expected))


# --- parameter counts for every kind ------------------------------------------------------------------------------

PARAM_MODELS = {
    "mixed": ((12, 12, 3), {
        "conv_bias": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
        "conv_dilated": {"type": "conv2d", "filters": 5, "kernel_size": 3, "dilation_rate": 2, "use_bias": False},
        "bn": {"type": "batch_norm"},
        "act": {"type": "activation", "activation": "relu"},
        "mp": {"type": "max_pool"},
        "drop": {"type": "dropout", "rate": 0.1},
        "conv_pad": {"type": "conv2d", "filters": 6, "kernel_size": [3, 2], "padding": [[1, 0], [2, 1]]},
        "ap": {"type": "avg_pool", "pool_size": 2, "strides": 1, "padding": "same"},
        "flat": {"type": "flatten"},
        "fc": {"type": "dense", "units": 7, "activation": "tanh"},
        "bn_flat": {"type": "batch_norm", "momentum": 0.9},
        "out": {"type": "dense", "units": 3, "use_bias": False},
    }),
    "global_pools": ((9, 9, 2), {
        "conv": {"type": "conv2d", "filters": 8, "kernel_size": 1, "use_bias": False},
        "gap": {"type": "global_avg_pool"},
        "out": {"type": "dense", "units": 4},
    }),
    "global_max": ((9, 9, 2), {
        "conv": {"type": "conv2d", "filters": 8, "kernel_size": 2, "strides": 2},
        "gmp": {"type": "global_max_pool"},
    }),
    "graph": ((10, 11, 3), {  # merging kinds take `inputs`; separable/depthwise share conv2d's window rules
        "sep": {"type": "separable_conv2d", "filters": 6, "kernel_size": 3, "padding": "same", "activation": "relu"},
        "sep_mult": {"type": "separable_conv2d", "filters": 6, "kernel_size": [3, 2], "strides": 2,
                     "depth_multiplier": 2, "padding": [[1, 0], [0, 1]], "use_bias": False},
        "dw": {"type": "depthwise_conv2d", "kernel_size": 3, "padding": "same", "inputs": "sep"},
        "dw_mult": {"type": "depthwise_conv2d", "kernel_size": 3, "depth_multiplier": 2, "dilation_rate": 2,
                    "use_bias": False, "inputs": "input"},
        "proj": {"type": "conv2d", "filters": 6, "kernel_size": 1, "inputs": "dw_mult"},
        "add": {"type": "add", "inputs": ["sep", "dw"]},
        "mul": {"type": "multiply", "inputs": ["add", "sep"]},
        "pool": {"type": "max_pool", "pool_size": 2, "padding": "same"},
        "cat": {"type": "concat", "inputs": ["pool", "sep_mult"]},
        "gap": {"type": "global_avg_pool"},
        "gap2": {"type": "global_max_pool", "inputs": "proj"},
        "cat_flat": {"type": "concat", "inputs": ["gap", "gap2"]},
        "out": {"type": "dense", "units": 3},
    }),
}


@pytest.mark.parametrize("name", PARAM_MODELS)
def test_param_counts_match_keras(keras, name):
    input_shape, layers = PARAM_MODELS[name]
    arch = arch_of(layers, input_shape)
    model = build_model(arch, seed=0)
    for row in arch.rows:
        layer = model.get_layer(row.name)
        assert (row.name, row.params) == (row.name, layer.count_params())
        assert (row.name, (None, *row.output_shape)) == (row.name, tuple(layer.output.shape))
    assert arch.total_params == model.count_params()
    verify_model(arch, model)


def test_param_count_hand_values():
    _, layers = PARAM_MODELS["mixed"]
    params = {r.name: r.params for r in arch_of(layers, (12, 12, 3)).rows}
    assert params["conv_bias"] == 3 * 3 * 3 * 4 + 4
    assert params["conv_dilated"] == 3 * 3 * 4 * 5  # dilation adds no weights; no bias
    assert params["bn"] == 4 * 5
    assert params["conv_pad"] == 3 * 2 * 5 * 6 + 6
    assert params["out"] == 7 * 3
    params = {r.name: r for r in arch_of(PARAM_MODELS["graph"][1], (10, 11, 3)).rows}
    assert params["sep"].params == 3 * 3 * 3 + 3 * 6 + 6  # depthwise 3×3 per channel, pointwise 3→6, bias
    assert params["sep_mult"].params == 3 * 2 * 6 * 2 + 6 * 2 * 6  # depth_multiplier 2 on 6 channels, no bias
    assert params["dw"].params == 3 * 3 * 6 + 6 and params["dw"].output_shape == (10, 11, 6)
    assert params["dw_mult"].output_shape == (6, 7, 6)  # 3 channels × 2; dilated 3×3 → 5×5 window, valid
    assert params["cat"].output_shape == (5, 6, 12) and params["cat_flat"].output_shape == (18,)


def test_param_models_cover_every_layer_kind():
    used = {layer["type"] for _, layers in PARAM_MODELS.values() for layer in layers.values()}
    assert used == set(LAYER_KINDS), "add the new kind to PARAM_MODELS"


def test_verify_model_notices_a_disagreement(keras):
    arch = arch_of(PARAM_MODELS["global_pools"][1], (9, 9, 2))
    model = build_model(arch, seed=0)
    arch.rows[0].params += 1
    with pytest.raises(AssertionError, match="conv"):
        verify_model(arch, model)


# --- whatever check_model accepts, Keras builds -------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers,clash",
    [
        ({"input": {"type": "conv2d", "filters": 4, "kernel_size": 3}, "flat": {"type": "flatten"}}, "input"),
        ({"conv1": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1},
          "conv1_pad": {"type": "conv2d", "filters": 4, "kernel_size": 3}}, "conv1_pad"),
        ({"conv1_pad": {"type": "conv2d", "filters": 4, "kernel_size": 3},
          "conv1": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": [[0, 1], [1, 0]]}}, "conv1_pad"),
    ],
    ids=["named_input", "named_like_later_pad_layer", "named_like_earlier_pad_layer"],
)
def test_names_keras_would_reuse_are_rejected_up_front(layers, clash):
    """The builder names keras.Input 'input' and an explicit padding '<conv>_pad': a layer may not take them."""
    with pytest.raises(ConfigError) as info:
        arch_of(layers, (8, 8, 1))
    assert info.value.path == f"model.layers.{clash}"


# --- the shipped models -------------------------------------------------------------------------------------------


def shipped(name: str):
    """A shipped model on MNIST: its shape and class count come from the data set (`${dataset.…}`)."""
    both = OmegaConf.create({"model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"),
                             "dataset": OmegaConf.load(CONF_DIR / "dataset" / "mnist.yaml")})
    cfg = OmegaConf.to_container(both, resolve=True)["model"]
    init = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "init" / "he.yaml"))
    return check_model(cfg, init)


@pytest.fixture(scope="module")
def ltfn5(keras):
    arch = shipped("ltfn5")
    return arch, build_model(arch, seed=0)


def test_ltfn5_matches_the_published_network(ltfn5):
    arch, model = ltfn5
    verify_model(arch, model)
    assert arch.total_params == model.count_params() == 321_738
    assert tuple(model.get_layer("pool2").output.shape) == (None, 7, 7, 128)
    assert tuple(model.get_layer("flatten").output.shape) == (None, 6272)
    assert tuple(model.get_layer("logits").output.shape) == (None, 10)
    assert tuple(model.output.shape) == (None, 10)
    rows = {r.name: r for r in arch.rows}
    assert rows["pool2"].output_shape == (7, 7, 128) and rows["logits"].output_shape == (10,)
    assert [r.params for r in arch.rows] == [640, 36_928, 0, 73_856, 147_584, 0, 0, 62_730]


@pytest.mark.parametrize("name,total,output", [("lenet5", 61_706, (10,)), ("allconv", None, (10,)),
                                               ("tiny", None, (10,))])
def test_shipped_models_build_and_verify(keras, name, total, output):
    arch = shipped(name)
    model = build_model(arch, seed=0)
    verify_model(arch, model)
    assert arch.output_shape == output
    if total is not None:
        assert model.count_params() == total


def test_lenet5_first_conv_sees_a_32x32_image(keras):
    arch = shipped("lenet5")
    model = build_model(arch, seed=0)
    assert tuple(model.get_layer("c1_pad").output.shape) == (None, 32, 32, 1)
    assert tuple(model.get_layer("c1").output.shape) == (None, 28, 28, 6)
    assert tuple(model.get_layer("s4").output.shape) == (None, 5, 5, 16)
