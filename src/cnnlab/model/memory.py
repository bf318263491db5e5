"""Size guard: estimate a run's model memory from the shape table and refuse it above a budget.

The estimate needs no TensorFlow: `check_model`'s rows already hold every layer's
output shape and parameter count. It counts

- parameters × 4 bytes × 4: the float32 weights, their gradients and up to two
  optimizer slots (Adam/AdamW keep m and v; RMSprop and momentum SGD one, plain SGD none);
- activations for one batch: every layer's output (and the input batch) × batch_size ×
  4 bytes × 2: the forward output kept for the backward pass, and the gradient of the
  same size the backward pass makes. Measured on ltfn5 (TensorFlow 2.21 on CPU, Adam):
  `fit`'s peak memory grows 0.88 MiB per image of batch (batch 100 → 1000), 1.3 copies of
  the outputs' 0.67 MiB, so 2 copies leave a margin for layers and backends that keep
  more. Mixed precision halves the activations; the estimate stays float32.

That is an upper-bound-style estimate of what the model itself needs, not of the
process (TensorFlow's own ~0.5-1 GB and the data set come on top). `trainer.memory_budget_mb`
sets the budget: `auto` (half of this machine's physical memory), a number of MiB, or
null (no guard).

Example:
    >>> from cnnlab.model.builder import check_model
    >>> arch = check_model({"name": "m", "input_shape": [28, 28, 1], "layers": {
    ...     "conv1": {"type": "conv2d", "filters": 8, "kernel_size": 3},
    ...     "flatten": {"type": "flatten"}, "logits": {"type": "dense", "units": 10}}},
    ...     {"hidden": {"scheme": "he_normal"}, "output": {"scheme": "glorot_uniform"}, "bias": {"scheme": "zeros"}})
    >>> est = estimate(arch, batch_size=100)
    >>> est.param_bytes, est.activation_bytes, est.biggest()
    (866720, 9288000, 'conv1')
    >>> try:
    ...     check_memory(arch, batch_size=100, budget=5)
    ... except ConfigError as e:
    ...     print(e.path, "|", e.message.split("; ")[1].split(":")[0])
    model.layers.conv1 | the run's estimate ~9.7 MB exceeds trainer.memory_budget_mb=5 (5.0 MB)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from cnnlab.config.fields import positive_number, show
from cnnlab.errors import ConfigError

BYTES = 4  # float32
PARAM_COPIES = 4  # weights + gradients + two optimizer slots (Adam's m and v): the most any of our optimizers keeps
ACTIVATION_COPIES = 2  # the forward output kept for backprop + the gradient of that size (measured 1.3, see above)
KEY = "trainer.memory_budget_mb"
MIB = 2**20


def memory_budget(v, path: str = KEY):
    """`trainer.memory_budget_mb`: auto | a number of MiB > 0 | null (no guard)."""
    if v is None or v == "auto":
        return v
    if isinstance(v, str):
        raise ConfigError(path, f"{show(v)} is not auto, null or a number of MiB such as 4096")
    return positive_number(v, path)


def _show(budget) -> str:
    return budget if isinstance(budget, str) else f"{budget:g}"


def budget_bytes(v) -> int | None:
    """The budget in bytes; `auto` is half of physical memory (where the OS tells it, else no guard)."""
    if v is None:
        return None
    if v == "auto":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):  # not a POSIX system: no guard rather than a guess
            return None
    return int(v * MIB)


def fmt_bytes(n: float) -> str:
    """1536 → '1.5 KB' (binary units, as MiB budgets are)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Estimate:
    batch_size: int
    layers: dict[str, tuple[int, int]]  # layer name → (parameter bytes, activation bytes); 'input' too

    @property
    def param_bytes(self) -> int:
        return sum(p for p, _ in self.layers.values())

    @property
    def activation_bytes(self) -> int:
        return sum(a for _, a in self.layers.values())

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes

    def biggest(self) -> str:
        """The layer that contributes most (never 'input' while a layer outweighs it)."""
        return max(self.layers, key=lambda name: sum(self.layers[name]))

    def summary(self, budget=None) -> str:
        """One line for the dry run's output."""
        line = (f"Memory estimate (batch {self.batch_size}): ~{fmt_bytes(self.total)} = weights, gradients and "
                f"optimizer slots ~{fmt_bytes(self.param_bytes)} + activations ~{fmt_bytes(self.activation_bytes)}")
        limit = budget_bytes(budget)
        return line + (f"; budget {KEY}={_show(budget)} ({fmt_bytes(limit)})" if limit else f"; {KEY}=null: no guard")


def estimate(arch, batch_size: int) -> Estimate:
    """Per-layer parameter and activation bytes of a checked architecture for one batch."""
    per_image = BYTES * ACTIVATION_COPIES * batch_size
    layers = {"input": (0, math.prod(arch.input_shape) * per_image)}
    for r in arch.rows:
        layers[r.name] = (r.params * BYTES * PARAM_COPIES, math.prod(r.output_shape) * per_image)
    return Estimate(batch_size, layers)


def check_memory(arch, batch_size: int, budget) -> Estimate:
    """Refuse a run whose estimate exceeds `budget` (`trainer.memory_budget_mb`), naming the biggest layer."""
    est = estimate(arch, batch_size)
    limit = budget_bytes(budget)
    if limit is None or est.total <= limit:
        return est
    name = est.biggest()
    params, acts = est.layers[name]
    row = next((r for r in arch.rows if r.name == name), None)
    size = [f"{k}={row.args[k]}" for k in ("filters", "units") if row and k in row.args]
    out = row.output_shape if row else arch.input_shape
    shown = f"{fmt_bytes(limit)}, half of this machine's memory" if budget == "auto" else fmt_bytes(limit)
    raise ConfigError(
        f"model.layers.{name}" if row else "model.input_shape",
        f"{' '.join(size) + ' gives ' if size else ''}an output of {tuple(out)} per image: ~{fmt_bytes(acts)} of "
        f"activations for a batch of {est.batch_size}, plus ~{fmt_bytes(params)} of weights, gradients and optimizer "
        f"slots; the run's estimate ~{fmt_bytes(est.total)} exceeds {KEY}={_show(budget)} ({shown}): "
        f"shrink the layer or trainer.batch_size, or raise {KEY} (null: no guard)",
    )
