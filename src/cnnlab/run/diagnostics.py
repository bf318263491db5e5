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

    h = ops.convert_to_tensor(x)
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
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
        layers.append({
            "name": layer.name,
            "preact_std": None if pre is None else std(pre),
            "act_std": std(h),
        })
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
