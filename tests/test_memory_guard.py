"""The size guard: a model whose estimated memory exceeds `trainer.memory_budget_mb` fails at config time.

`python run.py model.layers.conv1.filters=100000000 dry_run=true` used to grow to 4.5 GB
in TensorFlow and end in a ResourceExhaustedError traceback; now it is one line naming
the layer, in about a second, without importing TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli
from test_config_errors import imported_modules

from cnnlab.errors import ConfigError
from cnnlab.model.memory import budget_bytes, estimate, fmt_bytes
from cnnlab.schema import check_config

HUGE = "model.layers.conv1.filters=100000000"
# ltfn5's outputs per image, from its shape table (input, conv1, conv2, pool1, conv3, conv4, pool2, flatten, logits)
LTFN5_OUTPUTS = 784 + 50176 + 50176 + 12544 + 25088 + 25088 + 6272 + 6272 + 10


def test_ltfn5_estimate_is_the_hand_count(compose):
    run = check_config(compose("model=ltfn5", "trainer.batch_size=100"))
    est = estimate(run.arch, 100)
    assert est.param_bytes == 321_738 * 4 * 4  # weights, gradients, two optimizer slots, float32
    assert est.activation_bytes == LTFN5_OUTPUTS * 100 * 4 * 2  # the output kept for backprop, its gradient
    assert est.biggest() == "conv2"  # as many activations as conv1, and more weights
    assert fmt_bytes(est.total) == "139.5 MB"


def test_ltfn5_passes_the_default_budget_and_fails_a_tiny_one(compose):
    run = check_config(compose("model=ltfn5"))
    assert run.trainer.memory_budget_mb == "auto"
    with pytest.raises(ConfigError) as err:
        check_config(compose("model=ltfn5", "trainer.memory_budget_mb=100"))
    assert err.value.path == "model.layers.conv2"
    text = str(err.value)
    assert "\n" not in text
    assert "filters=64 gives an output of (28, 28, 64) per image" in text
    assert "the run's estimate ~139.5 MB exceeds trainer.memory_budget_mb=100 (100.0 MB)" in text


def test_the_budget_scales_with_the_batch(compose):
    check_config(compose("model=ltfn5", "trainer.memory_budget_mb=100", "trainer.batch_size=60"))
    with pytest.raises(ConfigError, match="for a batch of 80,"):
        check_config(compose("model=ltfn5", "trainer.memory_budget_mb=100", "trainer.batch_size=80"))


def test_null_budget_turns_the_guard_off(compose):
    run = check_config(compose(HUGE, "trainer.memory_budget_mb=null"))
    assert run.arch.rows[0].args["filters"] == 100_000_000


def test_auto_is_half_of_physical_memory():
    assert budget_bytes("auto") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    assert budget_bytes(1.5) == 3 * 2**19 and budget_bytes(None) is None


@pytest.mark.parametrize("value,message", [
    ("0", "expected a number > 0, got 0"), ("-1", "expected a number > 0, got -1"),
    ("lots", "'lots' is not auto, null or a number of MiB"), ("true", "expected a number > 0, got true"),
])
def test_cli_bad_budget_is_one_line(tmp_path, value, message):
    p = run_cli(f"trainer.memory_budget_mb={value}", "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith(f"error: trainer.memory_budget_mb: {message}") and p.stderr.count("\n") == 1


def test_cli_huge_filters_fail_in_a_second_without_tensorflow(tmp_path):
    started = time.perf_counter()
    p = run_cli(HUGE, "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=120)
    seconds = time.perf_counter() - started
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: model.layers.conv1: filters=100000000 gives an output of (28, 28, 100000000)")
    assert "exceeds trainer.memory_budget_mb=auto" in lines[0]
    assert seconds < 20  # ~1 s here; TensorFlow's import alone takes ~9 s, building the model minutes
    traced = subprocess.run([sys.executable, "-X", "importtime", "run.py", HUGE, "dry_run=true",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    modules = imported_modules(traced.stderr)
    assert "cnnlab.model.memory" in modules
    assert sorted(m for m in modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow"}) == []
