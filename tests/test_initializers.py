"""Initial weights: reproducible per seed, distinct per layer, each scheme's promised statistics, roles, overrides."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from cnnlab.model.builder import build_model, check_model, verify_model
from cnnlab.model.initializers import ALIASES, SCHEMES, check_init, make_initializer
from cnnlab.schema import check_config

HE = {"hidden": {"scheme": "he_normal"}, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "zeros"}}


@pytest.fixture(scope="module")
def keras():
    from cnnlab.backend import keras

    return keras


def load(group: str, name: str) -> dict:
    """One config group's file; a model on MNIST (it takes its shape and class count from the data set)."""
    both = OmegaConf.create({group: OmegaConf.load(CONF_DIR / group / f"{name}.yaml"),
                             "dataset": OmegaConf.load(CONF_DIR / "dataset" / "mnist.yaml")})
    return OmegaConf.to_container(both, resolve=True)[group]


def weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.get_weights()}


def kernel(model, name):
    return np.asarray(model.get_layer(name).kernel)


def bias(model, name):
    return np.asarray(model.get_layer(name).bias)


# --- seeds --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ltfn5_he_seed7(keras):
    arch = check_model(load("model", "ltfn5"), load("init", "he"))
    return arch, build_model(arch, seed=7)


def test_same_seed_gives_identical_weights(compose, ltfn5_he_seed7):
    _, first = ltfn5_he_seed7
    # the second build goes through the real config, with the seed from the trainer group
    run = check_config(compose("model=ltfn5", "init=he", "trainer.seed=7"))
    second = build_model(run.arch, run.trainer.seed)
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() == {"conv1", "conv2", "conv3", "conv4", "logits"}
    for name in a:
        for wa, wb in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(wa, wb, err_msg=name)


def test_different_seed_gives_different_kernels(ltfn5_he_seed7):
    arch, first = ltfn5_he_seed7
    other = build_model(arch, seed=8)
    for name in ("conv1", "conv2", "conv3", "conv4", "logits"):
        assert not np.array_equal(kernel(first, name), kernel(other, name)), name


SAME_SHAPES = {
    "name": "same_shapes",
    "input_shape": [8, 8, 1],
    "layers": {
        "conv1": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
        "conv2": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
        "conv3": {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
        "flatten": {"type": "flatten"},
        "fc1": {"type": "dense", "units": 16},
        "fc2": {"type": "dense", "units": 16},
        "fc3": {"type": "dense", "units": 16},
        "logits": {"type": "dense", "units": 10},
    },
}


@pytest.mark.parametrize("scheme", [{"scheme": "he_normal"}, {"scheme": "uniform"}, {"scheme": "orthogonal"}])
def test_same_shape_layers_get_different_weights(keras, scheme):
    init = {"hidden": scheme, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "normal", "stddev": 0.1}}
    model = build_model(check_model(SAME_SHAPES, init), seed=0)
    assert kernel(model, "conv2").shape == kernel(model, "conv3").shape
    assert kernel(model, "fc2").shape == kernel(model, "fc3").shape
    for a, b in [("conv2", "conv3"), ("fc2", "fc3")]:
        assert not np.array_equal(kernel(model, a), kernel(model, b)), (a, b)
    for a, b in [("conv1", "conv2"), ("conv2", "conv3"), ("fc1", "fc2"), ("fc2", "fc3")]:
        assert not np.array_equal(bias(model, a), bias(model, b)), (a, b)


# --- the statistics the presets promise ---------------------------------------------------------------------------


def close(value, target, n):
    """|value - target| within 5 standard errors of a sample standard deviation over n draws."""
    return abs(value - target) <= 5 * target / math.sqrt(2 * n)


def test_normal_preset_is_unit_stddev_not_keras_default(keras):
    arch = check_model(load("model", "ltfn5"), load("init", "normal"))
    model = build_model(arch, seed=0)
    for name in ("conv1", "conv2", "conv3", "conv4", "logits"):
        k = kernel(model, name)
        assert close(k.std(), 1.0, k.size), (name, k.std())  # RandomNormal's own default would be 0.05
        assert abs(k.mean()) < 5 / math.sqrt(k.size), (name, k.mean())
        assert np.abs(k).max() > 2.5  # untruncated: tails beyond 2σ exist
        assert not bias(model, name).any(), name


def test_he_preset_statistics(ltfn5_he_seed7):
    _, model = ltfn5_he_seed7
    for name, fan_in in [("conv1", 9 * 1), ("conv2", 9 * 64), ("conv3", 9 * 64), ("conv4", 9 * 128)]:
        k = kernel(model, name)
        target = math.sqrt(2 / fan_in)
        assert close(k.std(), target, k.size), (name, k.std(), target)
        # truncated normal: Keras draws from N(0, (target / 0.8796)²) cut at 2 of those σ
        assert np.abs(k).max() <= 2 * target / 0.87962566 * (1 + 1e-5), name
    k = kernel(model, "logits")  # glorot_uniform on the output layer
    limit = math.sqrt(6 / (6272 + 10))
    assert np.abs(k).max() <= limit
    assert close(k.std(), limit / math.sqrt(3), k.size)
    for name in ("conv1", "conv2", "conv3", "conv4", "logits"):
        assert not bias(model, name).any(), name


# --- roles and per-layer overrides --------------------------------------------------------------------------------

CONSTANTS = {
    "hidden": {"scheme": "constant", "value": 0.5},
    "output": {"scheme": "constant", "value": 2.0},
    "bias": {"scheme": "constant", "value": 0.25},
}


def test_last_weighted_layer_gets_output_role_others_hidden(keras):
    # allconv ends with a 1x1 conv ('scores') and a global pooling layer: the conv is the output layer
    arch = check_model(load("model", "allconv"), CONSTANTS)
    roles = {r.name: (r.kernel_init, r.bias_init) for r in arch.rows}
    assert roles["scores"] == (CONSTANTS["output"], CONSTANTS["bias"])
    for name in ("conv1", "down1", "conv2", "down2", "conv3", "conv4"):
        assert roles[name] == (CONSTANTS["hidden"], CONSTANTS["bias"]), name
    for name in ("drop1", "drop2", "gap"):
        assert roles[name] == (None, None), name

    model = build_model(arch, seed=0)
    verify_model(arch, model)
    for name in ("conv1", "down1", "conv2", "down2", "conv3", "conv4"):
        assert np.all(kernel(model, name) == 0.5) and np.all(bias(model, name) == 0.25), name
    assert np.all(kernel(model, "scores") == 2.0) and np.all(bias(model, "scores") == 0.25)


def test_per_layer_overrides_win(keras):
    cfg = load("model", "ltfn5")
    cfg["layers"]["conv2"]["init"] = {"scheme": "constant", "value": 3.0}
    cfg["layers"]["conv2"]["bias_init"] = {"scheme": "constant", "value": -1.0}
    cfg["layers"]["conv3"]["use_bias"] = False
    cfg["layers"]["logits"]["init"] = {"scheme": "ones"}  # beats the output role too
    arch = check_model(cfg, CONSTANTS)
    rows = {r.name: r for r in arch.rows}
    assert rows["conv3"].bias_init is None
    model = build_model(arch, seed=0)
    verify_model(arch, model)
    assert np.all(kernel(model, "conv1") == 0.5) and np.all(bias(model, "conv1") == 0.25)
    assert np.all(kernel(model, "conv2") == 3.0) and np.all(bias(model, "conv2") == -1.0)
    assert model.get_layer("conv3").bias is None and np.all(kernel(model, "conv3") == 0.5)
    assert np.all(kernel(model, "logits") == 1.0) and np.all(bias(model, "logits") == 0.25)


def test_per_layer_override_from_the_command_line(compose):
    run = check_config(compose("model=ltfn5", "init=normal", "+model.layers.conv1.init={scheme: kaiming_normal}"))
    rows = {r.name: r for r in run.arch.rows}
    assert rows["conv1"].kernel_init == {"scheme": "he_normal"}
    assert rows["conv2"].kernel_init == {"scheme": "normal", "mean": 0.0, "stddev": 1.0}


# --- aliases and every scheme -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_aliases(keras, alias, name):
    spec = check_init({"scheme": alias}, "init.hidden")
    assert spec == {"scheme": name}
    assert type(make_initializer(spec, seed=1)).__name__ == SCHEMES[name].keras_class


def test_alias_in_an_init_group_builds_that_scheme(keras):
    init = {"hidden": {"scheme": "kaiming_normal"}, "output": {"scheme": "xavier_uniform"}, "bias": {"scheme": "zeros"}}
    arch = check_model(load("model", "ltfn5"), init)
    assert [r.kernel_init["scheme"] for r in arch.rows if r.kernel_init] == ["he_normal"] * 4 + ["glorot_uniform"]
    model = build_model(arch, seed=0)
    k = kernel(model, "conv4")
    assert close(k.std(), math.sqrt(2 / (9 * 128)), k.size)


REQUIRED_ARGS = {"constant": {"value": 0.75}}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_builds(keras, name):
    spec = check_init({"scheme": name, **REQUIRED_ARGS.get(name, {})}, "init.hidden")
    init = make_initializer(spec, seed=5)
    assert type(init).__name__ == SCHEMES[name].keras_class
    values = np.asarray(init((8, 6)))
    assert values.shape == (8, 6) and np.isfinite(values).all()
    if SCHEMES[name].seeded:
        np.testing.assert_array_equal(values, np.asarray(make_initializer(spec, seed=5)((8, 6))))
        assert not np.array_equal(values, np.asarray(make_initializer(spec, seed=6)((8, 6))))
    else:
        expected = {"zeros": 0.0, "ones": 1.0, "constant": 0.75}[name]
        assert np.all(values == expected)


@pytest.mark.parametrize(
    "spec,low,high",
    [({"scheme": "normal"}, 0.8, 1.2), ({"scheme": "truncated_normal"}, 0.7, 1.0), ({"scheme": "uniform"}, 0.5, 0.65)],
)
def test_plain_distributions_default_to_unit_scale(keras, spec, low, high):
    values = np.asarray(make_initializer(check_init(spec, "init.hidden"), seed=0)((100, 100)))
    assert low < values.std() < high  # Keras's own defaults (0.05 scale) would be ~20 times smaller
    if spec["scheme"] == "uniform":
        assert values.min() >= -1.0 and values.max() <= 1.0 and values.min() < -0.9 and values.max() > 0.9
    if spec["scheme"] == "truncated_normal":
        assert np.abs(values).max() <= 2.0


def test_scheme_arguments_reach_keras(keras):
    spec = check_init({"scheme": "normal", "mean": 3.0, "stddev": 0.1}, "p")
    values = np.asarray(make_initializer(spec, 0)((50, 50)))
    assert abs(values.mean() - 3.0) < 0.02 and abs(values.std() - 0.1) < 0.01
    values = np.asarray(make_initializer(check_init({"scheme": "uniform", "minval": 2, "maxval": 4}, "p"), 0)((50, 50)))
    assert values.min() >= 2 and values.max() <= 4
    vs = check_init({"scheme": "variance_scaling", "scale": 2.0, "mode": "fan_in", "distribution": "uniform"}, "p")
    values = np.asarray(make_initializer(vs, 0)((200, 100)))
    assert np.abs(values).max() <= math.sqrt(3 * 2.0 / 200)
    q = np.asarray(make_initializer(check_init({"scheme": "orthogonal", "gain": 2.0}, "p"), 0)((6, 6)))
    np.testing.assert_allclose(q.T @ q, 4.0 * np.eye(6), atol=1e-4)
