"""Issue 12's single-run acceptance, measured: SIGKILL mid-training, `resume=<run_id>`, compare.

    python benchmarks/resume.py                                  # ltfn5, 300 steps (the acceptance)
    python benchmarks/resume.py --model tiny --dataset synthetic --steps 400 --eval-every 20
    python benchmarks/resume.py --sweep                          # the sweep acceptance (sweep_check)

Four real `run.py` runs, each against its own SQLite store in a temporary folder:
1. uninterrupted, default checkpoints (at each evaluation): the reference test loss, and the cost of
   checkpointing as `checkpoint_seconds / train_seconds` (both logged by the run);
2. the same with `trainer.checkpoint_every=null`: the wall-clock view of that cost (noisy on a shared CPU);
3. the same, SIGKILLed about half-way (half an evaluation interval after the checkpoint before the
   middle, at run 1's speed), then 4. `resume=<run_id>`. Kills only the process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], folder: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "run.py", *args, f"tracking.uri=sqlite:///{folder}/mlflow.db"],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        sys.exit(f"run.py {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def runs(folder: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ltfn5")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--sweep", action="store_true", help="a 6-job sweep killed after ~3 jobs, then resume=<parent>")
    a = p.parse_args()
    if a.sweep:
        return sweep_check(a)
    args = [f"model={a.model}", "init=he", f"dataset={a.dataset}", f"trainer.steps={a.steps}",
            f"trainer.eval_every={a.eval_every}", "trainer.deterministic=true", "trainer.verbose=0"]
    print("overrides:", " ".join(args))
    with tempfile.TemporaryDirectory() as whole, tempfile.TemporaryDirectory() as plain, \
            tempfile.TemporaryDirectory() as killed:
        run(args, whole)
        ref = runs(whole)[1][0].data.metrics
        share = ref["checkpoint_seconds"] / ref["train_seconds"]
        print(f"uninterrupted: test_loss={ref['test_loss']:.8g} train_seconds={ref['train_seconds']:.2f} "
              f"checkpoint_seconds={ref['checkpoint_seconds']:.3f} ({share:.3%} of training, "
              f"{a.steps // a.eval_every} checkpoints)")
        run([*args, "trainer.checkpoint_every=null"], plain)
        bare = runs(plain)[1][0].data.metrics
        print(f"no checkpoints: train_seconds={bare['train_seconds']:.2f} "
              f"(with checkpoints {ref['train_seconds'] / bare['train_seconds'] - 1:+.1%} wall clock)")

        per_step = ref["train_seconds"] / a.steps
        middle = a.steps // 2
        before = (middle // a.eval_every) * a.eval_every  # the checkpoint before the middle
        proc = subprocess.Popen([sys.executable, "run.py", *args, f"tracking.uri=sqlite:///{killed}/mlflow.db"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 1800
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(Path(killed, "checkpoints").glob("*/latest.json"))
            if found:
                try:
                    state = json.loads(found[0].read_text())
                except ValueError:
                    state = None
                if state and state["step"] >= before:
                    break
            time.sleep(0.02)
        if proc.poll() is not None or not state:
            sys.exit("the run ended (or no checkpoint came) before the kill")
        time.sleep((middle - state["step"]) * per_step)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        run_id = found[0].parent.name
        client, _ = runs(killed)
        # nobody could end the run: the resume below, the next command to open the store, ends it KILLED
        done = len(client.get_metric_history(run_id, "val_loss"))
        print(f"killed: run {run_id} SIGKILLed ~{(middle - state['step']) * per_step:.1f} s after its step-"
              f"{state['step']} checkpoint (~step {middle}), status {client.get_run(run_id).info.status}, "
              f"{done} evaluations recorded")

        started = time.monotonic()
        out = run([*args, f"resume={run_id}"], killed)
        client, found_runs = runs(killed)
        got = found_runs[0]
        steps = {k: [m.step for m in client.get_metric_history(run_id, k)] for k in got.data.metrics}
        duplicates = {k: s for k, s in steps.items() if len(s) != len(set(s))}
        same = f"{got.data.metrics['test_loss']:.6g}" == f"{ref['test_loss']:.6g}"
        print(f"resumed: {time.monotonic() - started:.1f} s, runs in store {len(found_runs)}, "
              f"same run id {got.info.run_id == run_id}, status {got.info.status}, "
              f"from step {got.data.tags.get('resumed_from_step')}, val_loss steps {steps['val_loss']}, "
              f"duplicate steps {duplicates or 'none'}")
        print(f"test_loss resumed={got.data.metrics['test_loss']:.8g} uninterrupted={ref['test_loss']:.8g} "
              f"equal to 6 significant digits: {same}; checkpoints left: "
              f"{list(Path(killed, 'checkpoints').glob('*/*'))}")
        print(out.stdout.strip().splitlines()[-1])


def sweep_check(a) -> None:
    """Issue 12's sweep acceptance: a 6-job sweep (one worker) SIGKILLed (its process group) once 3 jobs
    FINISHED and the 4th has written its first checkpoint, then `-m <same overrides> resume=<parent>`: every job FINISHED under the one parent, the
    jobs finished before the kill not re-run (same run ids, same start times)."""
    import sqlite3

    model = "tiny" if a.model == "ltfn5" else a.model  # 6 ltfn5 jobs would take most of an hour on 2 cores
    dataset = "synthetic" if model == "tiny" and a.dataset == "mnist" else a.dataset
    args = ["-m", f"model={model}", f"dataset={dataset}", "trainer.seed=1,2,3,4,5,6", f"trainer.steps={a.steps}",
            f"trainer.eval_every={a.eval_every // 2}", "trainer.deterministic=true", "trainer.verbose=0",
            "hydra.launcher.n_jobs=1"]
    print("overrides:", " ".join(args))
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder, "mlflow.db")

        def rows(sql):
            try:
                with sqlite3.connect(db, timeout=10) as con:
                    return con.execute(sql).fetchall()
            except sqlite3.Error:
                return []

        children = ("SELECT r.name, r.run_uuid, r.status, r.start_time, t.value FROM runs r JOIN tags t ON "
                    "t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' ORDER BY r.start_time")
        parents = "SELECT run_uuid, status FROM runs WHERE name LIKE 'sweep %'"
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "run.py", *args, f"tracking.uri=sqlite:///{db}",
                                 f"hydra.sweep.dir={folder}/first"], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and proc.poll() is None \
                and sum(r[2] == "FINISHED" for r in rows(children)) < 3:
            time.sleep(0.1)
        while time.monotonic() < deadline and proc.poll() is None and not any(  # job 4's first checkpoint
                Path(folder, "checkpoints", r[1], "latest.json").exists() for r in rows(children) if r[2] == "RUNNING"):
            time.sleep(0.1)
        if proc.poll() is not None:
            sys.exit("the sweep ended before the kill")
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher; its workers die with it, its guard ends the parent
        proc.wait()
        killed_after = time.monotonic() - started
        for _ in range(600):
            if all(s != "RUNNING" for _, s in rows(parents)):
                break
            time.sleep(0.2)
        before = {r[0]: r for r in rows(children)}
        ((parent, status),) = rows(parents)
        checkpointed = [n for n, r in before.items() if Path(folder, "checkpoints", r[1], "latest.json").exists()]
        print(f"killed after {killed_after:.1f} s: parent {parent} {status}; children "
              + ", ".join(f"{n} {r[2]}" for n, r in before.items()) + f"; with a checkpoint: {checkpointed or 'none'}")

        started = time.monotonic()
        out = run([*args, f"hydra.sweep.dir={folder}/again", f"resume={parent}"], folder)
        after = rows(children)
        newest = {r[0]: r for r in after}
        finished = [n for n, r in before.items() if r[2] == "FINISHED"]
        print(f"resumed in {time.monotonic() - started:.1f} s: parents {rows(parents)}; {len(after)} child runs, "
              f"newest per job: {sum(r[2] == 'FINISHED' for r in newest.values())}/{len(newest)} FINISHED, all under "
              f"{parent}: {all(r[4] == parent for r in after)}")
        print(f"finished before the kill, not re-run (same run id and start time): "
              f"{sum(newest[n][:4] == before[n][:4] for n in finished)}/{len(finished)}; "
              f"resumed in their own run: {[n for n in checkpointed if newest[n][1] == before[n][1]]}")
        print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("sweep:", "|"))))


if __name__ == "__main__":
    main()
