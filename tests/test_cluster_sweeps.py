"""Sweeps past one machine, for real: a 2-node Ray cluster and submitit, with the MLflow parent and children.

The Ray cluster lives in a network and PID namespace the test makes (`unshare`): there Ray
binds 127.0.0.1 (outside one it binds this machine's interface address), and when the
namespace's first process ends the kernel ends every process in it, so no Ray process
outlives the test whatever happens. The sweeps connect to it by address, as a user's would,
with token authentication (a token made here, passed as RAY_AUTH_TOKEN) and a SQLite store
declared on a shared filesystem (`tracking.shared_filesystem=true`; it is: one machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_sweep import store_runs

pytest.importorskip("hydra_plugins.hydra_ray_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

TINY = ["model=tiny", "dataset=synthetic", "dataset.train_size=400", "dataset.val_size=100", "dataset.test_size=100",
        "optimizer=adam", "optimizer.lr=0.01", "trainer.eval_every=10", "trainer.verbose=0",
        "tracking.log_model=false"]
PORT = 6390  # the namespace has a network of its own: no other process holds it


def test_job_context_reaches_each_job_config_and_cpu_shares():
    """What each launcher's jobs get: composed by Hydra's own `load_sweep_config`, as every launcher does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.sweep.callback import name_jobs_by
    from cnnlab.sweep.cluster import attach_job_context, cpus_per_job, runs_elsewhere

    def sweep_config(*overrides):
        return compose("config", overrides=list(overrides), return_hydra_config=True)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        ray = sweep_config("hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=3")
        assert (cpus_per_job(ray), runs_elsewhere(ray)) == (3, False)  # no address: Ray on this machine
        assert ray.hydra.launcher.ray.init.object_store_memory == 78643200
        remote = sweep_config("hydra/launcher=ray", "hydra.launcher.ray.init.address=10.0.0.5:6379")
        assert runs_elsewhere(remote) and remote.hydra.launcher.ray.init.object_store_memory is None
        slurm = sweep_config("hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=8")
        assert (cpus_per_job(slurm), runs_elsewhere(slurm)) == (8, True)
        local = sweep_config("hydra/launcher=cnnlab", "hydra.launcher.n_jobs=2")
        assert cpus_per_job(local) == max(1, (os.cpu_count() or 1) // 2) and not runs_elsewhere(local)
        swept = sweep_config("hydra/launcher=ray", "init=he", "optimizer.lr=0.2", "trainer.steps=5")
        attach_job_context(swept, {"CNNLAB_JOB_CPUS": "1", "CNNLAB_X": "it's a b"})
        name_jobs_by(swept, ["init", "optimizer.lr"], "abc123")  # (a sweep's callback gets them from swept_keys)
        assert swept.hydra.overrides.task[-1] == "tracking.parent_run_id=abc123"  # what the sweeper hands each job
        job = GlobalHydra.instance().config_loader().load_sweep_config(
            swept, ["init=glorot", "optimizer.lr=0.1", "trainer.steps=5", "tracking.parent_run_id=abc123"])
    assert dict(job.hydra.job.env_set) == {"CNNLAB_JOB_CPUS": "1", "CNNLAB_X": "it's a b"}
    assert job.init.hidden.scheme == "glorot_uniform" and job.optimizer.lr == 0.1
    # the job's own config says whose child it is and what its run is called: its swept overrides only
    assert job.tracking.parent_run_id == "abc123" and job.trainer.steps == 5
    assert job.hydra.job.override_dirname == "init=glorot,optimizer.lr=0.1"


def needs_namespaces():
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make namespaces here: {probe.stderr.decode().strip()}")


def namespace_script(tmp: Path, ray_tmp: Path) -> str:
    """Two Ray nodes, two sweeps on them at once (4 jobs; 2 jobs, one killed), the killer, then `ray stop`."""
    address = f"127.0.0.1:{PORT}"
    ray = f"{Path(sys.executable).parent}/ray"
    common = " ".join(["-m", *TINY, "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}",
                       "tracking.shared_filesystem=true"])
    return f"""
ip link set lo up || exit 20
cd {REPO}
{ray} start --head --port {PORT} --num-cpus 1 --include-dashboard=false --temp-dir {ray_tmp} \\
    --disable-usage-stats > {tmp}/head.log 2>&1 || exit 21
# the second node joins while the sweeps start (tasks wait for free CPUs)
{ray} start --address {address} --num-cpus 1 --disable-usage-stats > {tmp}/node.log 2>&1 &
{sys.executable} tests/kill_child.py {tmp}/killed.db trainer.seed=11 10 400 > {tmp}/killer.log 2>&1 &
{sys.executable} run.py {common} init=he,glorot trainer.seed=1,2 trainer.steps=30 \\
    tracking.uri=sqlite:///{tmp}/four.db hydra.sweep.dir={tmp}/four > {tmp}/four.out 2> {tmp}/four.err &
FOUR=$!
{sys.executable} run.py {common} trainer.seed=11,12 trainer.steps=60 \\
    tracking.uri=sqlite:///{tmp}/killed.db hydra.sweep.dir={tmp}/killed > {tmp}/killed.out 2> {tmp}/killed.err
echo $? > {tmp}/killed.rc
wait $FOUR
echo $? > {tmp}/four.rc
wait
timeout 30 {ray} stop > {tmp}/stop.log 2>&1
"""


def started_here(token: str) -> list[int]:
    """PIDs of processes whose environment holds this test's Ray token: all that the namespace started
    (Ray's daemons, its workers, the sweeps, their MLflow helpers)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if f"RAY_AUTH_TOKEN={token}".encode() in Path(entry.path, "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
    return found


@pytest.fixture(scope="module")
def ray_sweeps(tmp_path_factory):
    needs_namespaces()
    tmp = tmp_path_factory.mktemp("ray")
    # Ray's sockets live under --temp-dir, and a UNIX socket path may not exceed 107 bytes: a short one
    short = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    # RAY_worker_niceness=0: Ray starts its workers at nice 15; on a busy machine they would crawl
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_worker_niceness": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    proc = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c",
                             namespace_script(tmp, short)], env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # the namespace's first process dies: the kernel ends the rest
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 20  # the kernel reaps the namespace's processes promptly: bounded check
    while started_here(token) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = started_here(token)
    shutil.rmtree(short, ignore_errors=True)
    seconds = time.monotonic() - started
    print(f"ray namespace run: exit {code} in {seconds:.0f} s")
    return tmp, code, left


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_ray_cluster_sweep_lands_as_parent_and_four_finished_children(ray_sweeps):
    tmp, code, left = ray_sweeps
    assert code == 0, read(tmp / "head.log")[-2000:]
    assert "Ray runtime started" in read(tmp / "node.log"), read(tmp / "node.log")[-2000:]
    assert read(tmp / "four.rc").strip() == "0", read(tmp / "four.err")[-3000:]
    assert "sweep: 4 jobs, 4 finished, 0 failed" in read(tmp / "four.out"), read(tmp / "four.err")[-3000:]
    _, parents, children = store_runs(f"sqlite:///{tmp}/four.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["sweep.launcher"] == "CnnlabRayLauncher"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name: c.info.status for c in children} == {
        f"init={i},trainer.seed={s}": "FINISHED" for i in ("he", "glorot") for s in (1, 2)}
    for child in children:
        assert child.data.tags["job.cpus"] == "1"  # the task's num_cpus: one thread each
        assert child.data.tags["host"] and child.data.tags["ray.node_id"]
    assert left == [], f"processes of the Ray namespace still running: {left}"


def test_ray_jobs_ran_on_both_nodes(ray_sweeps):
    tmp, _, _ = ray_sweeps
    nodes = set()
    for db in ("four.db", "killed.db"):
        nodes |= {c.data.tags.get("ray.node_id") for c in store_runs(f"sqlite:///{tmp}/{db}")[2]}
    assert len(nodes - {None}) == 2, nodes


def test_ray_job_killed_is_a_failed_child_and_the_other_finishes(ray_sweeps):
    tmp, _, _ = ray_sweeps
    assert "killed" in read(tmp / "killer.log"), read(tmp / "killer.log")
    out, err = read(tmp / "killed.out"), read(tmp / "killed.err")
    assert read(tmp / "killed.rc").strip() == "0", err[-3000:]
    assert "sweep: 2 jobs, 1 finished, 1 failed" in out, err[-3000:]
    _, parents, children = store_runs(f"sqlite:///{tmp}/killed.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["jobs.failed"] == "1"
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"trainer.seed=11", "trainer.seed=12"}
    assert by_name["trainer.seed=12"].info.status == "FINISHED"
    lost = by_name["trainer.seed=11"]
    assert lost.info.status == "FAILED"
    assert "Ray task lost" in lost.data.tags["error"], lost.data.tags.get("error")
    assert "trainer.seed=11" in read(tmp / "killed.err")  # one line naming the lost job


def test_submitit_local_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_cli("-m", *TINY, "trainer.steps=30", "init=he,glorot", "trainer.seed=1,2",
                   "hydra/launcher=submitit_local", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun",
                   timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep: 4 jobs, 4 finished, 0 failed" in done.stdout, done.stderr[-3000:]
    _, parents, children = store_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["sweep.launcher"] == "CnnlabLocalLauncher"
    assert {c.info.run_name: c.info.status for c in children} == {
        f"init={i},trainer.seed={s}": "FINISHED" for i in ("he", "glorot") for s in (1, 2)}
    assert {c.data.tags["job.cpus"] for c in children} == {"1"}  # cpus_per_task
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


@pytest.mark.parametrize("launcher", [["hydra/launcher=ray", "hydra.launcher.ray.init.address=127.0.0.1:1"],
                                      ["hydra/launcher=submitit_slurm"]], ids=["ray", "slurm"])
def test_cluster_sweep_with_a_local_store_is_refused(tmp_path, launcher):
    db = tmp_path / "mlflow.db"
    done = run_cli("-m", *TINY, "init=he,glorot", *launcher, f"tracking.uri=sqlite:///{db}",
                   f"hydra.sweep.dir={tmp_path}/multirun", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: tracking.uri:"), done.stderr
    assert "tracking.shared_filesystem=true" in lines[0]
    assert not db.exists()  # refused before any MLflow run exists
