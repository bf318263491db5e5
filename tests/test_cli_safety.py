"""What a config or a signal can do to `run.py`: configs cannot run code, secrets are never recorded or
printed, Ctrl-C/SIGTERM at any moment and YAML syntax errors end in one line with the conventional code.

Everything runs the real `run.py` in a subprocess (or Hydra's real composition); each wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO, run_cli
from omegaconf import OmegaConf

from cnnlab.config.guard import check_composed, redact_overrides, redact_uri, redacted_config
from cnnlab.errors import ConfigError

TINY = ["model=tiny", "dataset=synthetic", "trainer.verbose=0"]
SECRET = "s3cr3t-Value-9731"  # what CNNLAB_TEST_SECRET holds


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- configs cannot run code ---------------------------------------------------------------------

def evil_model(root: Path, marker: Path) -> str:
    """A model file that asks Hydra to call numpy.savetxt (it wrote a file before this was checked)."""
    write(root / "model" / "evil.yaml", f"""# @package _global_
defaults:
  - /model/tiny@model
hydra:
  callbacks:
    evil:
      _target_: numpy.savetxt
      fname: {marker}
      X: [1, 2, 3]
""")
    return f"hydra.searchpath=[file://{root}]"


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_config_file_cannot_make_hydra_call_code(tmp_path, multirun):
    marker = tmp_path / "pwned.txt"
    searchpath = evil_model(tmp_path / "configs", marker)
    p = run_cli(*(["-m"] if multirun else []), searchpath, "model=evil", "dataset=synthetic", "dry_run=true",
                timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert error_lines(p.stderr) == [
        "error: hydra.callbacks.evil._target_: 'numpy.savetxt' is not a trusted target: Hydra instantiates only "
        "classes written out from hydra._internal.core_plugins., hydra.experimental.callbacks., hydra_plugins., "
        "cnnlab., optuna.samplers."]
    assert "Traceback" not in p.stderr
    assert not marker.exists()


def test_a_target_outside_hydra_is_refused(tmp_path):
    write(tmp_path / "model" / "t.yaml", "# @package _global_\ndefaults:\n  - /model/tiny@model\n"
                                         "model:\n  layers:\n    conv1:\n      _target_: os.system\n")
    p = run_cli(f"hydra.searchpath=[file://{tmp_path}]", "model=t", "dataset=synthetic", "dry_run=true", timeout=120)
    assert p.returncode == 2
    assert error_lines(p.stderr) == ["error: model.layers.conv1._target_: 'os.system': configs may not name code "
                                     "to run (a _target_ is allowed only in hydra.callbacks, hydra.launcher and "
                                     "hydra.sweeper)"]


def composed_with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", [None, *sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))])
def test_the_shipped_configs_pass_the_check(preset):
    """Every preset (the Optuna one brings its sampler, the joblib launcher, cnnlab's callbacks) is trusted."""
    cfg = composed_with_hydra(*([f"+experiment={preset}"] if preset else []))
    check_composed(cfg)
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "cnnlab.sweep.callback.MlflowSweepCallback"


@pytest.mark.parametrize("key, value, expected", [
    ("hydra.launcher._target_", "builtins.exec", "is not a trusted target"),
    ("hydra.sweeper.sampler._target_", "${oc.env:SAMPLER}", "is not a trusted target"),
    ("hydra.callbacks.x._target_", "cnnlab_evil.Callback", "is not a trusted target"),  # a prefix, not a module
    ("hydra.job.y._target_", "cnnlab.sweep.callback.MlflowSweepCallback", "configs may not name code to run"),
    ("hydra.job_logging.handlers.console.class", "numpy.savetxt", "logging may only use classes of"),
    ("hydra.hydra_logging.handlers.h.()", "logging.config.dictConfig", "logging may only use classes of"),
    ("hydra.job_logging.handlers.console.stream", "ext://antigravity", "logging may only refer to"),
    ("hydra.sweeper.custom_search_space", "os.system", "the sweeper would call it"),
    ("hydra.job.env_set.LD_PRELOAD", "/tmp/x.so", "a config may not set LD_PRELOAD"),
    ("dataset.loader._target_", "pickle.loads", "configs may not name code to run"),
])
def test_what_the_check_refuses(key, value, expected):
    cfg = OmegaConf.create(OmegaConf.to_container(composed_with_hydra(), resolve=False))
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=expected) as e:
        check_composed(cfg)
    assert e.value.path == key


# --- secrets are never logged or printed ---------------------------------------------------------

def test_redaction_of_uris_overrides_and_env_values(monkeypatch):
    assert redact_uri("http://user:pass@host:5000") == "http://***@host:5000"
    assert redact_uri("postgresql://u:p@h/db") == "postgresql://***@h/db"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact_overrides(["tracking.uri=https://me:pw@mlflow.example.org", "init=he"]) == [
        "tracking.uri=https://***@mlflow.example.org", "init=he"]
    monkeypatch.setenv("CNNLAB_TEST_SECRET", SECRET)
    cfg = OmegaConf.create({"tracking": {"experiment": "${oc.env:CNNLAB_TEST_SECRET}", "run_name": "r-${.experiment}",
                                         "uri": "http://u:${oc.env:CNNLAB_TEST_SECRET}@h:5000", "enabled": True}})
    assert redacted_config(cfg) == {"tracking": {"experiment": "***", "run_name": "r-***", "uri": "***",
                                                 "enabled": True}}
    assert redact_overrides([f"tracking.run_name={SECRET}"]) == ["tracking.run_name=***"]  # a value seen before


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_an_env_secret_reaches_no_param_tag_or_artifact(tmp_path):
    uri = store(tmp_path)
    p = run_cli(*TINY, "trainer.steps=5", f"tracking.uri={uri}", "tracking.experiment=${oc.env:CNNLAB_TEST_SECRET}",
                env={"CNNLAB_TEST_SECRET": SECRET}, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert SECRET not in p.stdout + p.stderr
    client, (run,) = runs(uri)
    assert client.get_experiment(run.info.experiment_id).name == SECRET  # the real value was used
    assert run.data.params["tracking.experiment"] == "***"
    assert run.data.params["tracking.uri"] == uri  # no credentials: left as it is
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert SECRET not in key and SECRET not in value, key
    from mlflow.artifacts import download_artifacts

    config = Path(download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml", dst_path=str(tmp_path),
                                     tracking_uri=uri)).read_text()
    assert "experiment: '***'" in config and SECRET not in config


def test_an_error_message_prints_the_uri_without_its_credentials():
    p = run_cli(*TINY, "trainer.steps=5", "tracking.uri=sqlite://user:secretpw@localhost//proc/cnnlab/mlflow.db",
                timeout=300)
    assert p.returncode == 2
    (line,) = error_lines(p.stderr)
    assert "cannot record to MLflow at 'sqlite://***@localhost//proc/cnnlab/mlflow.db'" in line
    assert "secretpw" not in p.stdout + p.stderr


def test_dry_run_and_hydra_output_files_show_no_credentials(tmp_path):
    out = tmp_path / "out"
    p = run_cli(*TINY, "dry_run=true", "tracking.uri=http://user:secretpw@127.0.0.1:9/", f"hydra.run.dir={out}",
                timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "uri: http://***@127.0.0.1:9/" in p.stdout
    files = sorted((out / ".hydra").glob("*.yaml"))
    assert [f.name for f in files] == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "tracking.uri=http://***@127.0.0.1:9/" in (out / ".hydra" / "overrides.yaml").read_text()
    for f in files:
        assert "secretpw" not in f.read_text(), f.name
    assert "secretpw" not in p.stdout + p.stderr


# --- signals and syntax --------------------------------------------------------------------------

def sigint_at_default():
    """A child started from a background shell inherits SIGINT ignored (and rightly keeps it so): a terminal's
    command starts with the default disposition, which is what these tests need."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("after", [0.5, 3.0, 4.0])
def test_ctrl_c_in_the_first_seconds_is_one_line_and_130(after, tmp_path):
    """Imports, composition, data loading, the first steps: wherever the signal lands, one line, exit 130."""
    proc = subprocess.Popen([sys.executable, "run.py", *TINY, "trainer.steps=3000", f"tracking.uri={store(tmp_path)}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_at_default)
    try:
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert line.startswith("error: interrupted (SIGINT)")


def test_sigterm_during_training_is_143_and_the_run_killed(tmp_path):
    uri = store(tmp_path)
    runs(uri)  # create the store first: polling a store whose schema another process is creating races on it
    proc = subprocess.Popen([sys.executable, "run.py", *TINY, "trainer.steps=100000", "trainer.eval_every=5",
                             f"tracking.uri={uri}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:  # until training is recording metrics
            time.sleep(1)
            found = runs(uri)[1]
            if found and found[0].data.metrics.get("val_loss") is not None:
                break
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.terminate()  # SIGTERM, to this process only: what `kill PID`, systemd or a batch scheduler send
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert line.startswith("error: interrupted (SIGTERM)")
    assert [r.info.status for r in runs(uri)[1]] == ["KILLED"]


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    bad = write(conf / "model" / "x.yaml", "name: x\ninput_shape: [28, 28, 1]\nlayers:\n"
                                           "  conv1: {type: conv2d, filters: 8\n  flat: {type: flatten}\n")
    p = run_cli("-cd", str(conf), "model=x", "dataset=synthetic", "dry_run=true", timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [f"error: {bad}:5:7: expected ',' or '}}', but got ':' "
                                     f"(while parsing a flow mapping at 4:10)"]
