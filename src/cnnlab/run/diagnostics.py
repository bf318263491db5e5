"""Init diagnostics, taken with every run before its first step.

On one batch of real training data: the standard deviation of each layer's
pre-activation (the linear output of a conv/dense layer) and activation,
and the initial loss. With N(0, 1) weights each ReLU layer multiplies the
scale by about sqrt(fan_in / 2), so logits come out in the thousands; with
He scaling the standard deviations stay near 1.
"""

from __future__ import annotations

import numpy as np


def init_diagnostics(model, x: np.ndarray, y: np.ndarray, from_logits: bool) -> dict:
    """{'layers': [{'name', 'preact_std', 'act_std'}, ...], 'initial_loss': float}, in inference mode."""
    from cnnlab.backend import keras

    ops = keras.ops

    def std(t) -> float:  # in float32: NumPy cannot hold a bfloat16 tensor (mixed_bfloat16 runs)
        return float(ops.convert_to_numpy(ops.std(ops.cast(t, "float32"))))

    # Walk the functional graph: a layer reads the values of the tensors it was called on (a list for add/concat),
    # so skip connections and branches see what they see in the model. `model.layers` is in topological order.
    values = {id(model.inputs[0]): ops.convert_to_tensor(x)}

    def value_of(t):
        return [values[id(u)] for u in t] if isinstance(t, (list, tuple)) else values[id(t)]

    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        h = value_of(layer.input)
        activation = getattr(layer, "activation", None)
        if isinstance(layer, keras.layers.Activation):
            pre, h = h, layer(h)
        elif activation is not None:
            layer.activation = keras.activations.linear  # read the linear output, then apply the real one
            try:
                pre = layer(h)
            finally:
                layer.activation = activation
            h = activation(pre)
        else:
            pre, h = None, layer(h, training=False)
        values[id(layer.output)] = h
        layers.append({
            "name": layer.name,
            "preact_std": None if pre is None else std(pre),
            "act_std": std(h),
        })
    h = values[id(model.outputs[0])]
    losses = keras.losses.sparse_categorical_crossentropy(y, h, from_logits=from_logits)
    return {"layers": layers, "initial_loss": float(np.mean(ops.convert_to_numpy(ops.cast(losses, "float32"))))}


def diagnostics_metrics(diag: dict) -> dict[str, float]:
    """Flat MLflow metrics: initial_loss, init.preact_std.<layer>, init.act_std.<layer>."""
    out = {"initial_loss": diag["initial_loss"]}
    for row in diag["layers"]:
        if row["preact_std"] is not None:
            out[f"init.preact_std.{row['name']}"] = row["preact_std"]
        out[f"init.act_std.{row['name']}"] = row["act_std"]
    return out
