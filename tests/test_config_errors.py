"""Every way of getting a config wrong ends in one ConfigError naming the key and the bad value.

The cases are real YAML files in tests/broken_configs/<group>/<case>.yaml (see the
README there), composed through Hydra with `hydra.searchpath` exactly as
`run.py hydra.searchpath=[file://...] <group>=<case>` would compose them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from omegaconf import OmegaConf

from cnnlab.config.fields import show
from cnnlab.errors import ConfigError
from cnnlab.model.layers import layer_kind
from cnnlab.schema import check_config

CORPUS = Path(__file__).resolve().parent / "broken_configs"
SEARCHPATH = f"hydra.searchpath=[file://{CORPUS}]"
MISSING = object()


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    path: str  # the ConfigError.path expected
    expected: str  # a distinctive substring of its message
    xfail: str | None  # a known bug in src/

    def __str__(self):
        return f"{self.group}/{self.name}"


def header(file: Path) -> list[str]:
    """The file's leading comment lines, after a `# @package` line (which Hydra needs first)."""
    lines = file.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# @package"):
        lines = lines[1:]
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line)
    return out


def parse(file: Path) -> Case:
    lines = header(file)
    if not lines or not lines[0].startswith("# error: "):
        raise ValueError(f"{file}: the first line must be '# error: <path>: <message substring>'")
    path, expected = lines[0][len("# error: "):].split(": ", 1)
    xfail = next((line[len("# xfail: "):] for line in lines[1:] if line.startswith("# xfail: ")), None)
    return Case(file.parent.name, file.stem, path, expected, xfail)


FILES = sorted(CORPUS.glob("*/*.yaml"))
CASES = [parse(f) for f in FILES]


def as_param(case: Case):
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=str(case), marks=marks)


def value_at(cfg, path: str):
    """The value the user wrote at `path` (uninterpolated), or MISSING."""
    node = OmegaConf.to_container(cfg, resolve=False)
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def about_the_key(message: str) -> bool:
    """Errors about the key itself (unknown, missing) name it in the path; there is no bad value to show."""
    return message.startswith(("unknown key", "unknown role", "unknown top-level key", "is required"))


# --- the corpus ---------------------------------------------------------------------------------------------------


def test_corpus_is_well_formed():
    assert len(FILES) >= 30
    groups = {f.parent.name for f in FILES}
    assert groups <= {"model", "init", "dataset", "optimizer", "trainer", "tracking", "experiment"}
    for file in FILES:
        parse(file)  # raises on a bad header
        if file.parent.name == "model":
            assert OmegaConf.load(file).get("name") == file.stem, f"{file}: name should be the file name"
    # one file per failure kind: no two files expect the same error
    headers = [(c.path, c.expected) for c in CASES]
    assert len(set(headers)) == len(headers)


def test_searchpath_adds_the_corpus_and_keeps_the_stock_configs(compose):
    stock = compose(SEARCHPATH, "model=lenet5", "init=he")
    assert stock.model.name == "lenet5"
    assert check_config(stock).arch.total_params == 61_706
    assert compose(SEARCHPATH, "model=padding_typo").model.name == "padding_typo"
    assert compose(SEARCHPATH, "init=unknown_role").init.hiden == {"scheme": "he_normal"}
    assert check_config(compose(SEARCHPATH)).arch.name == "ltfn5"  # the defaults are untouched


def test_corpus_is_not_visible_without_the_searchpath(compose):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException):
        compose("model=padding_typo")


@pytest.mark.parametrize("case", [as_param(c) for c in CASES])
def test_broken_config(compose, case: Case):
    add = "+" if case.group == "experiment" else ""  # presets are added (+experiment=...), not chosen
    cfg = compose(SEARCHPATH, f"{add}{case.group}={case.name}")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    e, text = err.value, str(err.value)
    assert e.path == case.path, text
    assert text and "\n" not in text and text == text.strip()
    assert text.startswith(f"{case.path}: ")
    assert case.expected in text
    value = value_at(cfg, case.path)
    shown = value is not MISSING and not isinstance(value, dict) and not str(value).startswith("${")
    if shown and not about_the_key(e.message):
        assert show(value) in e.message, f"the message does not show the bad value {show(value)}: {text}"


def test_kernel_that_does_not_fit_names_layer_and_input_size(compose):
    with pytest.raises(ConfigError) as err:
        check_config(compose(SEARCHPATH, "model=kernel_does_not_fit"))
    assert str(err.value) == (
        "model.layers.conv3.kernel_size: 9 does not fit the 7×7 input it receives (padding 'valid')"
    )


def test_override_on_top_of_a_good_config_is_checked_too(compose):
    with pytest.raises(ConfigError) as err:
        check_config(compose("model=ltfn5", "model.layers.conv3.padding=valid", "model.layers.conv3.kernel_size=15"))
    assert str(err.value) == (
        "model.layers.conv3.kernel_size: 15 does not fit the 14×14 input it receives (padding 'valid')"
    )


# --- suggestions --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo,kind",
    [("maxpool", "max_pool"), ("conv2", "conv2d"), ("Dense", "dense"), ("dropuot", "dropout"),
     ("batchnorm", "batch_norm"), ("avgpool", "avg_pool"), ("global_avgpool", "global_avg_pool")],
)
def test_unknown_layer_type_suggests_the_closest_kind(typo, kind):
    with pytest.raises(ConfigError) as err:
        layer_kind(typo, "model.layers.x")
    assert err.value.path == "model.layers.x.type"
    assert f"unknown layer type {typo!r}; did you mean {kind!r}?" in str(err.value)


def test_unknown_layer_type_without_a_close_kind_lists_the_kinds():
    with pytest.raises(ConfigError) as err:
        layer_kind("lstm", "model.layers.x")
    assert "did you mean" not in str(err.value)
    assert "(known: conv2d, max_pool, avg_pool" in str(err.value)


@pytest.mark.parametrize(
    "typo,arg", [("kernel", "kernel_size"), ("stride", "strides"), ("dilation", "dilation_rate"),
                 ("activaton", "activation"), ("usebias", "use_bias"), ("filter", "filters")],
)
def test_misspelt_argument_suggests_the_closest(compose, typo, arg):
    cfg = compose("model=ltfn5", f"+model.layers.conv2.{typo}=1")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert err.value.path == f"model.layers.conv2.{typo}"
    assert f"did you mean {arg!r}?" in str(err.value)


# --- the command line ---------------------------------------------------------------------------------------------

CLI_CASES = [
    pytest.param(["model.layers.conv1.padding=samee", "dry_run=true"], ["model.layers.conv1.padding", "'samee'"],
                 id="bad-value"),
    pytest.param(["model=nope"], ["model/nope", "ltfn5"], id="unknown-group-option"),
    pytest.param(["+model.layers.conv1.fliters=3", "dry_run=true"], ["model.layers.conv1.fliters", "'filters'"],
                 id="misspelt-argument-with-plus"),
    pytest.param(["init.hidden.scheme=kaiming", "dry_run=true"], ["init.hidden.scheme", "'kaiming'"],
                 id="unknown-init-scheme"),
    pytest.param(["trainer.epochs=3", "dry_run=true"], ["trainer.steps", "epochs=3"], id="steps-and-epochs"),
    pytest.param(["model.layers.conv1.type=[conv2d]", "dry_run=true"], ["model.layers.conv1.type"],
                 id="layer-type-a-list"),
]


@pytest.mark.parametrize("args,names", CLI_CASES)
def test_cli_reports_one_line_and_exits_2(tmp_path, args, names):
    result = run_cli(*args, f"hydra.run.dir={tmp_path}", timeout=120)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]
    assert result.returncode == 2
    assert result.stdout == ""


OVERRIDE_MISTAKES = {  # Hydra's "+key" advice and the parser's token lists never reach the user
    "typo": ("trainer.step=100",
             "error: trainer.step: unknown key; did you mean 'steps'? (override 'trainer.step=100')"),
    "double =": ("trainer.steps==100", "error: trainer.steps: unexpected '='; did you mean 'trainer.steps=100'? "
                                       "(override 'trainer.steps==100')"),
    "layer argument": ("model.layers.conv1.fliters=3",
                       "error: model.layers.conv1.fliters: unknown key; did you mean 'filters'? "
                       "(override 'model.layers.conv1.fliters=3')"),
}


@pytest.mark.parametrize("case", OVERRIDE_MISTAKES, ids=list(OVERRIDE_MISTAKES))
def test_override_mistakes_are_one_line_with_the_key_a_fix_and_the_override(tmp_path, case):
    override, line = OVERRIDE_MISTAKES[case]
    result = run_cli(override, f"hydra.run.dir={tmp_path}", timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")


def test_override_mistakes_without_a_subprocess():
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from cnnlab.cli import override_syntax_message, unknown_key_message

    def composition_error(*overrides):
        try:
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                compose("config", overrides=list(overrides))
        except (ConfigCompositionException, OverrideParseException) as e:
            return e
        raise AssertionError(f"{overrides} composed")

    assert unknown_key_message(composition_error("trainer.zzz=1")).startswith(
        "trainer.zzz: unknown key (known: steps, epochs, batch_size,")
    assert unknown_key_message(composition_error("model.layers.conv1.dilation_rate=2")) == (
        "model.layers.conv1.dilation_rate: not set in the model's file; "
        "add it with '+model.layers.conv1.dilation_rate=2'")
    conv9 = unknown_key_message(composition_error("model.layers.conv9.filters=3"))  # a layer name, also
    assert conv9.startswith("model.layers.conv9: unknown key; did you mean 'conv")
    assert conv9.endswith("(override 'model.layers.conv9.filters=3')")
    for override, line in [
        ("optimizer.lr=1e-3,", "optimizer.lr: the value ends too early; did you mean 'optimizer.lr=1e-3'?"),
        ("trainer.steps", "trainer.steps: no '=': an override is key=value (override 'trainer.steps'; grammar: "),
        ("init=he)", "init: unexpected ')' (override 'init=he)'; grammar: "),
    ]:
        e = composition_error(override)
        assert override_syntax_message(e.override, str(e.message)).startswith(line)
        assert "\n" not in override_syntax_message(e.override, str(e.message))


def test_cli_composes_the_corpus_like_the_tests_do(tmp_path):
    result = run_cli(SEARCHPATH, "model=kernel_does_not_fit", "dry_run=true", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        "error: model.layers.conv3.kernel_size: 9 does not fit the 7×7 input it receives (padding 'valid')\n"
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output ('import time: self | cumulative | module')."""
    names = set()
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S+)", line)
        if m:
            names.add(m.group(1))
    return names


CONFIG_ONLY = {
    "rejected config": (["model.layers.conv1.padding=samee", "dry_run=true"], 2,
                        "error: model.layers.conv1.padding: 'samee'"),
    "unparsable override": (["model.layers.conv1.filters=["], 2,
                            "error: model.layers.conv1.filters: cannot read the value at '[' "
                            "(override 'model.layers.conv1.filters=['; grammar: https://hydra.cc/"),
    "--help": (["--help"], 0, "python run.py model=ltfn5 init=he"),
    "--cfg job": (["--cfg", "job", "init=glorot"], 0, "scheme: glorot_uniform"),
}


@pytest.mark.parametrize("case", CONFIG_ONLY, ids=list(CONFIG_ONLY))
def test_config_only_commands_import_neither_tensorflow_nor_mlflow(tmp_path, case):
    args, code, expected = CONFIG_ONLY[case]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "run.py", *args, f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, result.stderr[-2000:]
    assert expected in result.stdout + result.stderr
    modules = imported_modules(result.stderr)
    assert {"hydra", "omegaconf"} <= modules  # the parse works
    if case == "rejected config":
        assert {"cnnlab.schema", "cnnlab.model.layers"} <= modules  # the check ran
    heavy = sorted(m for m in modules if m.split(".")[0] in {"tensorflow", "mlflow", "keras"})
    assert heavy == []
