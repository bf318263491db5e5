"""What a run's record holds besides its metrics: the tags that say where and how it ran, its files.

Example:
    >>> sorted(versions())[:2]
    ['versions.cnnlab', 'versions.hydra-core']
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
from pathlib import Path

from cnnlab.record.store import REPO_ROOT


def git_state() -> dict[str, str]:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"versions.python": platform.python_version()}
    for pkg in ("cnnlab", "keras", "tensorflow", "jax", "torch", "mlflow", "hydra-core", "omegaconf", "numpy"):
        try:
            out[f"versions.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_tags(run, data, overrides, choices, keras) -> dict[str, str]:
    from cnnlab.backend import device_name
    from cnnlab.threads import job_cpus

    return {
        "hydra.overrides": " ".join(overrides) or "(none)", **git_state(), **versions(),
        "keras.backend": keras.backend.backend(), "device": device_name(), "data.source": data.source,
        **({"class_names": json.dumps(list(data.class_names))[:8000]} if getattr(data, "class_names", None) else {}),
        **({"normalize": json.dumps({"mean": data.normalize[0], "std": data.normalize[1]})}
           if getattr(data, "normalize", None) else {}),
        "dtype_policy": keras.config.dtype_policy().name,
        "model.params": str(run.arch.total_params),
        **({"job.cpus": str(job_cpus())} if job_cpus() else {}),  # the thread pools' size (cnnlab.threads)
        **ray_tags(),
        **{f"choice.{group}": option for group, option in (choices or {}).items()},
    }


def ray_tags() -> dict[str, str]:
    """On a Ray worker, the node's id (`ray list nodes` names it); `host` and `process.pid` come with the run."""
    import sys

    ray = sys.modules.get("ray")  # imported only in a process that Ray runs or drives
    if ray is not None and ray.is_initialized():
        return {"ray.node_id": ray.get_runtime_context().get_node_id()}
    return {}


def run_files(run) -> Path:
    """A new folder with config.yaml and shape_table.txt (the model goes up apart: `Recorder.log_model`)."""
    from omegaconf import OmegaConf

    from cnnlab.model.builder import shape_table

    folder = Path(tempfile.mkdtemp(prefix="cnnlab-"))
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run.resolved)))
    (folder / "shape_table.txt").write_text(shape_table(run.arch) + "\n")
    return folder
