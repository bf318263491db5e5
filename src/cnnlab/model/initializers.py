"""Weight-initialisation schemes (config group `init`) and their Keras initializers.

An init config assigns a scheme by role — `hidden` (kernels of every layer
but the output one), `output` (kernel of the last layer with weights) and
`bias` — and a layer may override its own with `init:` (kernel) and
`bias_init:`. Each layer gets its own initializer instance seeded from the
run seed and the layer's position, so one seed rebuilds identical weights
and no two layers share a kernel.

Plain distributions default to unit scale, as their names say in maths:
`normal` is N(0, 1) (Keras's RandomNormal defaults to stddev 0.05),
`truncated_normal` is N(0, 1) cut at 2σ, `uniform` is U(-1, 1).

Example:
    >>> check_init({"scheme": "kaiming_normal"}, "init.hidden")
    {'scheme': 'he_normal'}
    >>> describe(check_init({"scheme": "normal", "stddev": 1.0}, "init.hidden"))
    'normal(mean=0.0, stddev=1.0)'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnlab.config.fields import (
    Field,
    check_fields,
    choice,
    closest,
    number,
    positive_number,
    show,
)
from cnnlab.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    keras_class: str
    args: dict[str, Field] = field(default_factory=dict)
    seeded: bool = True


SCHEMES: dict[str, Scheme] = {
    "normal": Scheme("RandomNormal", {"mean": Field(number, 0.0), "stddev": Field(positive_number, 1.0)}),
    "truncated_normal": Scheme("TruncatedNormal", {"mean": Field(number, 0.0), "stddev": Field(positive_number, 1.0)}),
    "uniform": Scheme("RandomUniform", {"minval": Field(number, -1.0), "maxval": Field(number, 1.0)}),
    "glorot_normal": Scheme("GlorotNormal"),
    "glorot_uniform": Scheme("GlorotUniform"),
    "he_normal": Scheme("HeNormal"),
    "he_uniform": Scheme("HeUniform"),
    "lecun_normal": Scheme("LecunNormal"),
    "lecun_uniform": Scheme("LecunUniform"),
    "orthogonal": Scheme("Orthogonal", {"gain": Field(positive_number, 1.0)}),
    "variance_scaling": Scheme(
        "VarianceScaling",
        {
            "scale": Field(positive_number, 1.0),
            "mode": Field(choice("fan_in", "fan_out", "fan_avg"), "fan_in"),
            "distribution": Field(choice("truncated_normal", "untruncated_normal", "uniform"), "truncated_normal"),
        },
    ),
    "zeros": Scheme("Zeros", seeded=False),
    "ones": Scheme("Ones", seeded=False),
    "constant": Scheme("Constant", {"value": Field(number)}, seeded=False),
}
ALIASES = {
    "xavier_normal": "glorot_normal",
    "xavier_uniform": "glorot_uniform",
    "kaiming_normal": "he_normal",
    "kaiming_uniform": "he_uniform",
}
ROLES = ("hidden", "output", "bias")


def check_init(spec, path: str) -> dict:
    """Validate one `{scheme: ..., <args>}` mapping; return it with aliases resolved and defaults filled."""
    if not isinstance(spec, dict) or "scheme" not in spec:
        raise ConfigError(path, f"expected a mapping with a 'scheme' key, e.g. {{scheme: he_normal}}, got {show(spec)}")
    name = spec["scheme"]
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(name, str) or name not in SCHEMES:
        known = ", ".join([*SCHEMES, *ALIASES])
        raise ConfigError(
            f"{path}.scheme",
            f"unknown init scheme {show(spec['scheme'])}{closest(spec['scheme'], [*SCHEMES, *ALIASES])} "
            f"(known: {known})",
        )
    args = check_fields({k: v for k, v in spec.items() if k != "scheme"}, SCHEMES[name].args, path)
    if name == "uniform" and args["minval"] >= args["maxval"]:
        raise ConfigError(f"{path}.maxval",
                          f"{show(args['maxval'])} must be greater than minval {show(args['minval'])}")
    return {"scheme": name, **args}


def check_init_group(cfg, path: str = "init") -> dict:
    """Validate the `init` group: one scheme per role."""
    if not isinstance(cfg, dict):
        raise ConfigError(path, f"expected a mapping with keys {', '.join(ROLES)}, got {show(cfg)}")
    for key in cfg:
        if key not in ROLES:
            raise ConfigError(f"{path}.{key}", f"unknown role{closest(key, ROLES)} (known: {', '.join(ROLES)})")
    missing = [r for r in ROLES if r not in cfg]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}", "is required but missing")
    return {role: check_init(cfg[role], f"{path}.{role}") for role in ROLES}


def describe(spec: dict) -> str:
    """Short text for tables: 'he_normal', 'normal(mean=0.0, stddev=1.0)'."""
    args = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "scheme")
    return f"{spec['scheme']}({args})" if args else spec["scheme"]


def layer_seed(run_seed: int, position: int, slot: int) -> int:
    """A distinct, reproducible seed per (run, layer position, kernel=0 / bias=1 / second kernel=2).

    Slot 2 (a separable convolution's pointwise kernel) is shifted far away so that it meets no
    other layer's slot 0 or 1; slots 0 and 1 give the seeds they always gave.
    """
    return (run_seed * 1_000_003 + 2 * position + slot % 2 + (slot // 2) * 1_073_741_789) % (2**31 - 1)


def make_initializer(spec: dict, seed: int):
    """A fresh Keras initializer instance for one weight of one layer."""
    from cnnlab.backend import keras

    scheme = SCHEMES[spec["scheme"]]
    kwargs = {k: v for k, v in spec.items() if k != "scheme"}
    if scheme.seeded:
        kwargs["seed"] = seed
    return getattr(keras.initializers, scheme.keras_class)(**kwargs)
