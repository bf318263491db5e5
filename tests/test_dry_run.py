"""`python run.py ... dry_run=true` checks, prints and builds the model; a new network is one new YAML file."""

from __future__ import annotations

import textwrap

import pytest
from conftest import run_cli

from cnnlab.model.builder import build_model, shape_table, verify_model
from cnnlab.schema import check_config


def line_of(text: str, layer: str) -> str:
    """The shape-table line of `layer`."""
    lines = [line for line in text.splitlines() if line.split()[:1] == [layer]]
    assert len(lines) == 1, f"no single table line for {layer!r} in:\n{text}"
    return lines[0]


@pytest.mark.parametrize(
    "model,total,lines",
    [
        ("ltfn5", "321,738", {"conv1": "(None, 28, 28, 64)", "pool1": "(None, 14, 14, 64)",
                              "pool2": "(None, 7, 7, 128)", "flatten": "(None, 6272)", "logits": "(None, 10)"}),
        ("lenet5", "61,706", {"c1": "(None, 28, 28, 6)", "s4": "(None, 5, 5, 16)", "logits": "(None, 10)"}),
        ("allconv", None, {"down1": "(None, 14, 14, 32)", "down2": "(None, 7, 7, 64)", "conv3": "(None, 5, 5, 64)",
                           "scores": "(None, 5, 5, 10)", "gap": "(None, 10)"}),
    ],
)
def test_dry_run_prints_the_table_and_builds_the_model(compose, tmp_path, capsys, model, total, lines):
    run = check_config(compose(f"model={model}", "init=he", "dry_run=true"))
    if model == "ltfn5":  # the command itself once; the other networks through the same function, in-process
        result = run_cli(f"model={model}", "init=he", "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
    else:
        from cnnlab.run.job import dry_run

        dry_run(compose(f"model={model}", "init=he", "dry_run=true"), run)
        out = capsys.readouterr().out

    total = total or f"{run.arch.total_params:,}"
    assert shape_table(run.arch) in out  # the whole table, as the library renders it
    assert f"Total params: {total}   output: (None, 10)" in out
    for layer, shape in lines.items():
        assert shape in line_of(out, layer)
    assert total in line_of(out, "Total")
    assert f"built the same model: {total} parameters, output (None, 10)" in out
    estimate = "Memory estimate (batch 100): ~"
    assert out.index("Total params:") < out.index(estimate) and "budget trainer.memory_budget_mb=auto (" in out
    assert f"name: {model}" in out and "dry_run: true" in out  # the resolved config comes first
    assert out.index("dry_run: true") < out.index(f"Model: {model}")


def test_ltfn5_table_lines(compose):
    table = shape_table(check_config(compose("model=ltfn5", "init=he")).arch)
    assert "(None, 7, 7, 128)" in line_of(table, "pool2")
    assert "(None, 10)" in line_of(table, "logits") and "62,730" in line_of(table, "logits")
    assert "he_normal / zeros" in line_of(table, "conv1")
    assert "glorot_uniform / zeros" in line_of(table, "logits")
    assert "321,738" in line_of(table, "Total")


NEW_NET = """\
    # A network nobody wrote code for: explicit padding, batch norm, average pooling, global pooling.
    name: mynet
    input_shape: [28, 28, 1]
    layers:
      conv1: {type: conv2d, filters: 12, kernel_size: 5, padding: [[2, 2], [1, 3]], use_bias: false}
      bn1: {type: batch_norm}
      act1: {type: activation, activation: gelu}
      pool1: {type: avg_pool, pool_size: 2}
      conv2: {type: conv2d, filters: 24, kernel_size: 3, strides: 2, padding: same, activation: elu}
      drop: {type: dropout, rate: 0.25}
      conv3: {type: conv2d, filters: 24, kernel_size: 3, dilation_rate: 2, padding: same, activation: relu,
              init: {scheme: orthogonal}}
      gap: {type: global_max_pool}
      hidden: {type: dense, units: 32, activation: swish}
      logits: {type: dense, units: 10}
"""


def test_new_network_is_a_new_yaml_file_and_nothing_else(compose, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text(textwrap.dedent(NEW_NET))
    cfg = compose(f"hydra.searchpath=[file://{tmp_path}]", "model=mynet", "init=lecun", "trainer.seed=3")
    run = check_config(cfg)
    arch = run.arch
    assert arch.name == "mynet"
    assert [r.name for r in arch.rows] == ["conv1", "bn1", "act1", "pool1", "conv2", "drop", "conv3", "gap",
                                           "hidden", "logits"]
    rows = {r.name: r for r in arch.rows}
    assert rows["conv1"].output_shape == (28, 28, 12)  # 28+2+2-5+1 by 28+1+3-5+1
    assert rows["pool1"].output_shape == (14, 14, 12)
    assert rows["conv2"].output_shape == (7, 7, 24)
    assert rows["gap"].output_shape == (24,)
    assert rows["conv3"].kernel_init == {"scheme": "orthogonal", "gain": 1.0}
    assert rows["logits"].kernel_init == {"scheme": "lecun_normal"}

    model = build_model(arch, run.trainer.seed)
    verify_model(arch, model)
    assert model.name == "mynet"
    assert tuple(model.output.shape) == (None, 10)
    assert model.count_params() == arch.total_params
